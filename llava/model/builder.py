"""`load_pretrained_model`: one loader for every checkpoint this project (or official LLaVA) writes.

What a directory holds decides how it loads, never its name:
- `adapter_config.json`         -> LoRA/QLoRA adapter (+ `non_lora_trainables.bin`) over `model_base`
- `mm_projector.bin`, no weights -> stage-1 projector over `model_base`
- model weights                  -> full checkpoint
Every path goes through `resolve_pretrained` (a missing folder is named as such, never a hub error);
paths a checkpoint recorded (its LoRA base, its vision tower) are found as `llava.model.portable` says.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig

from llava.model import portable
from llava.model.llava_arch import load_projector_weights
from llava.model.paths import resolve_pretrained
from llava.model.quantization import bnb_config
from llava.model.registry import backbone_for_config

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def checkpoint_kind(model_path: str) -> str:
    """'lora', 'projector' or 'full', from the files in `model_path`."""
    if not os.path.isdir(model_path):
        return "full"  # a cached hub name: only full checkpoints are published that way
    present = set(os.listdir(model_path))
    if "adapter_config.json" in present:
        return "lora"
    if "mm_projector.bin" in present and not present.intersection(WEIGHT_FILES):
        return "projector"
    if present.intersection(WEIGHT_FILES):
        return "full"
    raise FileNotFoundError(
        f"{model_path} holds no model weights, LoRA adapter or mm_projector.bin; is it a checkpoint directory?"
    )


def ensure_pad_token(tokenizer) -> None:
    """Give tokenizers without a pad token (LLaMA-2, MPT, Phi-2) one, as official LLaVA does."""
    if tokenizer.pad_token is None:
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

    model_path = resolve_pretrained(model_path, "--model-path")
    kind = checkpoint_kind(model_path)
    if kind == "full":
        checkpoint = model_path if os.path.isdir(model_path) else None
        config = AutoConfig.from_pretrained(model_path)
        _describe_tower(config, checkpoint)
        model = AutoModelForCausalLM.from_pretrained(model_path, config=config, **load_kwargs)
        tokenizer_source = model_path
    else:
        if kind == "lora":
            model_base = portable.lora_base(model_path, model_base)
        elif model_base:
            model_base = resolve_pretrained(model_base, "--model-base")
        else:
            raise ValueError(
                f"{model_path} is a stage-1 projector checkpoint (mm_projector.bin); "
                "pass --model-base with the LLM it was trained on"
            )
        config = AutoConfig.from_pretrained(model_path)
        _describe_tower(config, model_path)
        backbone = backbone_for_config(config)
        logger.info("loading %s base %s for %s checkpoint %s", backbone.name, model_base, kind, model_path)
        # Load the base at its own vocabulary size, then grow to the tokens training added.
        trained_vocab, config.vocab_size = config.vocab_size, AutoConfig.from_pretrained(model_base).vocab_size
        model = backbone.model_class.from_pretrained(model_base, config=config, llava_checkpoint=model_path,
                                                     **load_kwargs)
        if trained_vocab != config.vocab_size:
            model.resize_embeddings(trained_vocab)
        tokenizer_source = model_path if _has_tokenizer(model_path) else model_base
        if kind == "projector":
            load_stage1_weights(model, os.path.join(model_path, "mm_projector.bin"))
        else:
            model = _apply_lora(model, model_path, merge=quantization is None)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    ensure_pad_token(tokenizer)
    model.eval()

    image_processor = None
    tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    if tower is not None:
        if os.path.exists(os.path.join(model_path, "preprocessor_config.json")):
            image_processor = AutoImageProcessor.from_pretrained(model_path)
        else:
            image_processor = tower.load_image_processor(portable.tower_source(model.config, _local(model_path)))

    config = model.config
    context_len = (
        getattr(config, "tokenizer_model_max_length", None)
        or getattr(config, "max_sequence_length", None)
        or getattr(config, "max_position_embeddings", None)
        or getattr(config, "max_seq_len", None)
        or 2048
    )
    return tokenizer, model, image_processor, context_len


def _has_tokenizer(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in TOKENIZER_FILES)


def _local(path: str) -> str | None:
    return path if os.path.isdir(path) else None


def _describe_tower(config, checkpoint: str | None) -> None:
    """Official LLaVA configs name the tower but do not describe it: read its config from where it is."""
    if getattr(config, "mm_vision_tower", None) and not getattr(config, "mm_vision_config", None):
        config.mm_vision_config = CLIPVisionConfig.from_pretrained(portable.tower_source(config, checkpoint)).to_dict()


def _apply_lora(model, model_path: str, merge: bool):
    from peft import PeftModel

    non_lora = os.path.join(model_path, "non_lora_trainables.bin")
    if os.path.exists(non_lora):
        load_non_lora_trainables(model, non_lora)
    else:
        logger.warning("%s has no non_lora_trainables.bin; the projector keeps its base weights", model_path)
    model = PeftModel.from_pretrained(model, model_path)
    # Merging into 4/8-bit weights would re-quantize them; keep the adapter separate there.
    return model.merge_and_unload() if merge else model
