"""LLaVA-style vision-language models: CLIP vision tower + projector + a causal LLM."""

__version__ = "0.1.0"
