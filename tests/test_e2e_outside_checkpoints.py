"""A new backbone x new tower pair end to end through the launchers, from checkpoints made outside the project.

The LLM is a Qwen2 written by plain transformers (`Qwen2ForCausalLM.save_pretrained`) with a tokenizer of the
family and a ChatML chat template, and the tower a SigLIP written by `SiglipVisionModel.save_pretrained` with its
`SiglipImageProcessor`: the folders a user brings, never through llava.model.tiny. Then, as docs/training.md
tells users: `MODEL_PATH=... VISION_TOWER=... bash scripts/pretrain.sh`, `bash scripts/finetune_lora.sh` from that
projector, `python -m llava.eval.model_vqa` on held-out questions and `python -m llava.export.hf` read back by
transformers' `LlavaForConditionalGeneration`. And `BACKBONE=qwen2 bash scripts/finetune.sh` (the tiny default
LLM of another backbone than phi) trains as `BACKBONE=phi` does.

Measured on 2 shared CPU cores (load 5): 160 s for the two stages, model_vqa and export, 105 s for the BACKBONE run (its tiny LLM is built first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from helpers import exported_logits_diff, read_jsonl
from llava.model.layout import checkpoint_kind
from llava.model.offline_tokenizers import gpt2_family_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
# Qwen2.5-Instruct's template, shortened: ChatML turns, a default system turn, the assistant header to generate.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict:
    """The LLM and tower folders as users bring them: transformers' own classes and `save_pretrained`."""
    root = tmp_path_factory.mktemp("outside")
    llm, tower = root / "qwen2-user", root / "siglip-user"
    # No wheel ships Qwen's vocabulary: GPT-2's byte-level BPE with Qwen's special tokens and roles.
    tokenizer = gpt2_family_tokenizer(bos_token=None, unk_token=None, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tower)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tower)
    return {"root": root, "llm": str(llm), "tower": str(tower)}


def launch(script: str, cwd=REPO, **env) -> str:
    variables = {**os.environ, "NUM_GPUS": "1", "MAX_STEPS": "3", "SAVE_STEPS": "3", "BATCH_SIZE": "4", **env}
    proc = subprocess.run(["bash", os.path.join(cwd, "scripts", script)], env=variables, cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"checkpoint in {env['OUTPUT_DIR']}" in proc.stdout
    return proc.stdout + proc.stderr


def losses(out) -> list[float]:
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_outside_qwen2_and_siglip_pretrain_lora_answer_and_export(outside, demo_data, tmp_path):
    data = {"DATA_DIR": os.path.dirname(demo_data["pretrain"]), "IMAGE_FOLDER": demo_data["image_folder"],
            "MODEL_PATH": outside["llm"], "VISION_TOWER": outside["tower"], "RUN_NAME": "outside"}
    stage1, stage2 = tmp_path / "stage1", tmp_path / "lora"
    launch("pretrain.sh", OUTPUT_DIR=str(stage1), **data)
    assert checkpoint_kind(str(stage1)) == "projector" and (stage1 / "mm_projector.bin").exists()
    config = json.loads((stage1 / "config.json").read_text())
    assert config["model_type"] == "llava_qwen2" and config["mm_vision_config"]["model_type"] == "siglip_vision_model"
    assert all(torch.isfinite(torch.tensor(losses(stage1))))

    log = launch("finetune_lora.sh", OUTPUT_DIR=str(stage2), PRETRAIN_MM_MLP_ADAPTER=str(stage1 / "mm_projector.bin"),
                 LORA_R="8", LORA_ALPHA="16", LR="1e-3", **data)
    assert f"loaded the stage-1 projector from {stage1 / 'mm_projector.bin'}" in log
    assert checkpoint_kind(str(stage2)) == "lora"
    # The tower travels with the checkpoint, with the image processor the user saved.
    assert (stage2 / "vision_tower" / "model.safetensors").exists()
    assert json.loads((stage2 / "preprocessor_config.json").read_text())["image_processor_type"].startswith(
        "SiglipImageProcessor")
    trained = losses(stage2)
    assert len(trained) == 3 and all(torch.isfinite(torch.tensor(trained)))
    # The user's chat template stays with the tokenizer of every checkpoint.
    assert AutoTokenizer.from_pretrained(stage2).chat_template == CHAT_TEMPLATE

    answers = tmp_path / "answers.jsonl"
    subprocess.run([sys.executable, "-m", "llava.eval.model_vqa", "--model-path", str(stage2), "--question-file",
                    demo_data["eval_questions_jsonl"], "--image-folder", demo_data["image_folder"], "--answers-file",
                    str(answers), "--max_new_tokens", "4"], cwd=REPO, check=True, capture_output=True, timeout=300)
    questions = read_jsonl(demo_data["eval_questions_jsonl"])
    written = read_jsonl(str(answers))
    assert [(a["question_id"], a["prompt"]) for a in written] == [(q["question_id"], q["text"]) for q in questions]
    assert all(isinstance(a["text"], str) and a["model_id"] for a in written)

    exported = tmp_path / "hf"
    subprocess.run([sys.executable, "-m", "llava.export.hf", "--model-path", str(stage2), "--out", str(exported)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    hf = LlavaForConditionalGeneration.from_pretrained(exported)
    assert hf.config.text_config.model_type == "qwen2" and hf.config.vision_config.model_type == "siglip_vision_model"
    assert exported_logits_diff(stage2, exported) <= 1e-4


def test_backbone_qwen2_builds_its_tiny_default_llm_and_finetunes(outside, demo_data, tmp_path):
    # The launchers build the tiny default LLM under <repo>/checkpoints; a stand-in repo of links keeps the
    # checkout clean while running the same scripts and code.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("scripts", "llava", "zero2.json", "zero3.json", "zero3_offload.json"):
        (repo / name).symlink_to(os.path.join(REPO, name))
    out = tmp_path / "full"
    log = launch("finetune.sh", cwd=str(repo), BACKBONE="qwen2", VISION_TOWER=outside["tower"], ZERO="2",
                 DATA_DIR=os.path.dirname(demo_data["pretrain"]), IMAGE_FOLDER=demo_data["image_folder"],
                 OUTPUT_DIR=str(out), MAX_STEPS="2", SAVE_STEPS="2")
    # What BACKBONE=phi does (the default): the tiny LLM of that family is written once, then trained on.
    assert "== creating tiny qwen2 LLM in checkpoints/tiny-qwen2" in log
    assert json.loads((repo / "checkpoints" / "tiny-qwen2" / "config.json").read_text())["model_type"] == "qwen2"
    assert checkpoint_kind(str(out)) == "full"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_qwen2"
