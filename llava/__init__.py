"""LLaVA-style vision-language models: a vision tower (CLIP, SigLIP, DINOv2) + projector + a causal LLM."""

__version__ = "0.1.0"

from llava import quiet as _quiet  # noqa: E402

_quiet.install()  # known-harmless library messages (listed, with reasons, in llava/quiet.py)
