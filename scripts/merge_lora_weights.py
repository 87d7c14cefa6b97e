"""Merge a LoRA/QLoRA checkpoint into its base LLM and write a full checkpoint that loads on its own.

    python scripts/merge_lora_weights.py --model-path checkpoints/llava-phi-tiny-lora \
        --model-base checkpoints/tiny-phi --save-model-path checkpoints/llava-phi-tiny-lora-merged
"""

from __future__ import annotations

import argparse
import os

import torch

from llava.model.builder import load_pretrained_model
from llava.model.layout import checkpoint_kind
from llava.model.paths import resolve_pretrained


def merge(model_path: str, model_base: str | None, save_model_path: str) -> None:
    model_path = resolve_pretrained(model_path, "--model-path")  # a missing folder is not "not a LoRA checkpoint"
    if checkpoint_kind(model_path) != "lora":
        raise SystemExit(f"{model_path} is not a LoRA checkpoint (no adapter_config.json); nothing to merge")
    # Full precision on the CPU, so the merge is exact and needs no GPU; load_pretrained_model merges.
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base, device="cpu", dtype=torch.float32
    )
    model.config.use_cache = True
    os.makedirs(save_model_path, exist_ok=True)
    model.save_pretrained(save_model_path)
    tokenizer.save_pretrained(save_model_path)
    if image_processor is not None:
        image_processor.save_pretrained(save_model_path)
    print(f"merged {model_path} into {save_model_path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", required=True, help="LoRA checkpoint (adapter + non_lora_trainables.bin)")
    parser.add_argument("--model-base", default=None, help="base LLM (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--save-model-path", required=True)
    args = parser.parse_args(argv)
    merge(args.model_path, args.model_base, args.save_model_path)


if __name__ == "__main__":
    from llava.errors import run

    run(main)
