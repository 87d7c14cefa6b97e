"""`load_pretrained_model`: one loader for every checkpoint this project (or official LLaVA) writes.

What a directory holds decides how it loads, never its name:
- `adapter_config.json`         -> LoRA/QLoRA adapter (+ `non_lora_trainables.bin`) over `model_base`
- `mm_projector.bin`, no weights -> stage-1 projector over `model_base`
- model weights                  -> full checkpoint
`llava.model.layout.resolve_checkpoint` works that out once (kind, base, tower source, tokenizer,
image processor); a missing folder is named as such, never a hub error.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llava.env import load_tokenizer
from llava.model.layout import FULL, NON_LORA_FILE, PROJECTOR, PROJECTOR_FILE, resolve_checkpoint
from llava.model.llava_arch import anyres_for, load_projector_weights
from llava.model.multimodal_encoder import read_tower_config
from llava.model.quantization import bnb_config
from llava.model.registry import backbone_for_config

logger = logging.getLogger(__name__)

def ensure_pad_token(tokenizer, preferred: str | None = None) -> None:
    """Give tokenizers without a pad token (LLaMA-2, MPT, Phi-2, Llama-3) one, as official LLaVA does:
    the backbone's `preferred` pad when the vocabulary holds it, else UNK, else EOS."""
    if tokenizer.pad_token is None:
        if preferred is not None and preferred in tokenizer.get_vocab():
            tokenizer.pad_token = preferred
        else:
            tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token


def load_non_lora_trainables(model, path: str) -> None:
    """Load the weights a LoRA run trained outside the adapter (projector, unfrozen modules)."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    # peft-wrapped names ("base_model.model.model.mm_projector...") -> plain model names.
    weights = {k.removeprefix("base_model.model."): v for k, v in weights.items()}
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} holds weights this model does not have: {result.unexpected_keys[:5]}")


def load_stage1_weights(model, path: str) -> None:
    """The projector, plus the embedding rows stage 1 trained for `--mm_use_im_start_end` tokens."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    load_projector_weights(model.get_model().mm_projector, path, weights)
    extra = {k: v for k, v in weights.items() if "mm_projector." not in k}
    if not extra:
        return
    result = model.load_state_dict(extra, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} holds weights this model does not have: {result.unexpected_keys[:5]}")


def _default_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,  # accepted for official LLaVA call sites; the files decide
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map="auto",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    **kwargs,
):
    """Returns `(tokenizer, model, image_processor, context_len)` ready for inference."""
    if load_4bit and load_8bit:
        raise ValueError("choose one of load_4bit and load_8bit")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or _default_dtype(device)
    if device_map == "auto" and not device.startswith("cuda"):
        device_map = {"": device}
    load_kwargs = dict(dtype=dtype, device_map=device_map, **kwargs)
    quantization = bnb_config(4 if load_4bit else 8, compute_dtype=dtype) if (load_4bit or load_8bit) else None
    if quantization is not None:
        load_kwargs["quantization_config"] = quantization
    if attn_implementation:
        load_kwargs["attn_implementation"] = attn_implementation

    layout = resolve_checkpoint(model_path, model_base)
    config = AutoConfig.from_pretrained(layout.path)
    _describe_tower(config, layout)
    if layout.kind == FULL:
        model = AutoModelForCausalLM.from_pretrained(layout.path, config=config, llava_checkpoint=layout, **load_kwargs)
    else:
        backbone = backbone_for_config(config)
        logger.info("loading %s base %s for %s checkpoint %s", backbone.name, layout.base, layout.kind, layout.path)
        # Load the base at its own vocabulary size, then grow to the tokens training added.
        trained_vocab, config.vocab_size = config.vocab_size, AutoConfig.from_pretrained(layout.base).vocab_size
        model = backbone.model_class.from_pretrained(layout.base, config=config, llava_checkpoint=layout,
                                                     **load_kwargs)
        if trained_vocab != config.vocab_size:
            model.resize_embeddings(trained_vocab)
        if layout.kind == PROJECTOR:
            load_stage1_weights(model, os.path.join(layout.path, PROJECTOR_FILE))
        else:
            model = _apply_lora(model, layout.path, merge=quantization is None)

    tokenizer = load_tokenizer(layout.tokenizer_source)
    ensure_pad_token(tokenizer, backbone_for_config(model.config).pad_token)
    model.eval()

    image_processor = None
    tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    if tower is not None:
        image_processor = tower.load_image_processor(layout.processor_source)
        try:
            anyres_for(model.config, tower)  # AnyRes settings that do not fit this tower fail at load, not per image
        except ValueError as e:
            raise ValueError(f"{model_path}: {e}") from None

    config = model.config
    context_len = (
        getattr(config, "tokenizer_model_max_length", None)
        or getattr(config, "max_sequence_length", None)
        or getattr(config, "max_position_embeddings", None)
        or getattr(config, "max_seq_len", None)
        or 2048
    )
    return tokenizer, model, image_processor, context_len


def _describe_tower(config, layout) -> None:
    """Official LLaVA configs name the tower but do not describe it: read its config from where it is."""
    if getattr(config, "mm_vision_tower", None) and not getattr(config, "mm_vision_config", None):
        config.mm_vision_config = read_tower_config(layout.tower_source).to_dict()


def _apply_lora(model, model_path: str, merge: bool):
    from peft import PeftModel

    non_lora = os.path.join(model_path, NON_LORA_FILE)
    if os.path.exists(non_lora):
        load_non_lora_trainables(model, non_lora)
    else:
        logger.warning("%s has no %s; the projector keeps its base weights", model_path, NON_LORA_FILE)
    model = PeftModel.from_pretrained(model, model_path)
    # Merging into 4/8-bit weights would re-quantize them; keep the adapter separate there.
    return model.merge_and_unload() if merge else model
