"""Flag parsing: official LLaVA flags map onto --train_modules; conflicts are clear errors (<1 s)."""

from __future__ import annotations

import pytest

from llava.train.arguments import parse_args, resolve_train_modules
from llava.train.recipes import resolve_backbone

REQUIRED = ["--model_name_or_path", "m", "--vision_tower", "v", "--data_path", "d", "--output_dir", "/tmp/llava-args"]


def modules(*flags):
    model_args, _, training_args = parse_args([*REQUIRED, *flags])
    return set(resolve_train_modules(model_args, training_args))


def test_official_flags_map_onto_train_modules():
    assert modules() == {"projector", "llm"}
    assert modules("--tune_mm_mlp_adapter", "True") == {"projector"}
    assert modules("--lora_enable", "True") == {"projector", "lora"}
    assert modules("--freeze_backbone", "True") == {"projector"}
    assert modules("--train_modules", "projector,lora,lm_head") == {"projector", "lora", "lm_head"}
    assert modules("--train_modules", "projector,vision_tower,llm") == {"projector", "vision_tower", "llm"}


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--train_modules", "projector,decoder"], "unknown \\['decoder'\\]"),
        (["--train_modules", "lora,llm"], "exclude each other"),
        (["--bits", "4"], "--bits 4 quantizes the LLM"),
    ],
)
def test_conflicting_flags_are_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        modules(*flags)


def test_cpu_defaults_and_unknown_backbone():
    model_args, _, training_args = parse_args([*REQUIRED, "--backbone", "gpt5"])
    assert training_args.remove_unused_columns is False  # batches carry `images`
    with pytest.raises(ValueError, match="--backbone 'gpt5' is unknown; choose one of gemma2, gemma3, llama, llama3, mpt, opt, phi, phi3, qwen2, qwen3, smollm2"):
        resolve_backbone(model_args)
    with pytest.raises(SystemExit):
        parse_args(["--output_dir", "/tmp/x"])  # no --model_name_or_path / --vision_tower / --data_path
