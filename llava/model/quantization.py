"""bitsandbytes settings shared by 4/8-bit loading and QLoRA training."""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig

# The vision tower, projector and lm_head stay in full precision. transformers 5 matches these
# as regexes anchored at a module boundary, so a bare "vision_tower" would skip nothing.
QUANTIZATION_SKIP_MODULES = [r".*\.vision_tower", r".*\.mm_projector", "lm_head"]


def bnb_config(bits: int, compute_dtype: torch.dtype = torch.float32, double_quant: bool = True, quant_type: str = "nf4"):
    """A `BitsAndBytesConfig` for `bits` in {4, 8}; None for 16/32 (no quantization)."""
    if bits in (16, 32):
        return None
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES)
    raise ValueError(f"--bits must be 4, 8, 16 or 32, got {bits}")
