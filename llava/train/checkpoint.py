"""What each training mode writes, so every checkpoint loads with `load_pretrained_model`.

- projector (stage 1): config.json + mm_projector.bin (keys `model.mm_projector.*`)
- lora / qlora:        adapter + non_lora_trainables.bin + config.json
- full:                save_pretrained (written by the HF Trainer)
Each also gets the tokenizer and the CLIP image processor (preprocessor_config.json); the partial
ones also a copy of a frozen tower that came from a local folder (vision_tower/, llava.model.portable).
Under ZeRO-3 parameters are partitioned; they are gathered (on every rank) before writing.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch

from llava.model.portable import save_tower_copy  # a frozen tower from a local folder travels along

MM_PROJECTOR = "mm_projector"


def is_zero3(param) -> bool:
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered(params, modifier_rank=None):
    """Full copies of ZeRO-3-partitioned `params` inside the block (a no-op otherwise)."""
    params = [p for p in params if is_zero3(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def gather_state(named_params) -> dict[str, torch.Tensor]:
    """CPU copies of the given parameters; every rank must call it under ZeRO-3."""
    state = {}
    for name, param in named_params:
        with gathered([param]):
            state[name] = param.detach().to("cpu", copy=True)
    return state


def trainable_state(model) -> dict[str, torch.Tensor]:
    return gather_state((n, p) for n, p in model.named_parameters() if p.requires_grad)


def save_config(model, output_dir: str) -> None:
    """The LLaVA config (mm_* fields included) without the training-only quantization settings."""
    config = copy.deepcopy(model.config)
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    config.use_cache = True
    config.save_pretrained(output_dir)


def save_projector_checkpoint(model, output_dir: str, state: dict) -> None:
    # Everything stage 1 trained: the projector, plus the embeddings when --mm_use_im_start_end added
    # tokens (official LLaVA's layout; loaders take the `mm_projector.*` keys they need).
    weights = dict(state)
    if not any(MM_PROJECTOR in k for k in weights):
        raise RuntimeError("the projector is not trainable; nothing to write to mm_projector.bin")
    save_config(model, output_dir)
    torch.save(weights, os.path.join(output_dir, "mm_projector.bin"))
    save_tower_copy(model, output_dir)


def save_lora_checkpoint(peft_model, output_dir: str, state: dict) -> None:
    # peft picks the adapter weights out of `state`; the rest (projector, unfrozen modules) goes beside it.
    peft_model.save_pretrained(output_dir, state_dict=state)
    non_lora = {k: v for k, v in state.items() if "lora_" not in k}
    torch.save(non_lora, os.path.join(output_dir, "non_lora_trainables.bin"))
    save_config(peft_model.get_base_model(), output_dir)
    save_tower_copy(peft_model.get_base_model(), output_dir)


def checkpoint_mode(output_dir: str) -> str | None:
    """'projector' / 'lora' for the partial checkpoints this module writes, None otherwise."""
    if os.path.exists(os.path.join(output_dir, "adapter_config.json")):
        return "lora"
    if os.path.exists(os.path.join(output_dir, "mm_projector.bin")):
        return "projector"
    return None
