"""In-process training runs of every recipe (single process, no DeepSpeed; ≈2 min).

Each run is a few steps of a tiny Phi + tiny CLIP on the generated shapes data, and every
checkpoint it writes is loaded back with `load_pretrained_model`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llava.model.builder import load_pretrained_model
from llava.model.layout import checkpoint_kind
from llava.inference import InferenceEngine
from llava.train.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base_args(tiny_llm, tiny_clip, demo_data):
    return [
        "--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip,
        "--image_folder", demo_data["image_folder"], "--mm_projector_type", "mlp2x_gelu",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "steps",
        "--model_max_length", "256", "--seed", "0", "--data_seed", "0",
    ]


def log_history(output_dir):
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return json.load(f)["log_history"]


def losses(output_dir):
    return {e["step"]: e["loss"] for e in log_history(output_dir) if "loss" in e}


def stage1(base_args, demo_data, out, *extra):
    train([*base_args, "--data_path", demo_data["pretrain"], "--version", "plain", "--tune_mm_mlp_adapter", "True",
           "--learning_rate", "1e-3", "--output_dir", str(out), *extra])


def lora(base_args, demo_data, out, *extra):
    train([*base_args, "--data_path", demo_data["finetune"], "--lora_enable", "True", "--lora_r", "8",
           "--lora_alpha", "16", "--learning_rate", "1e-3", "--image_aspect_ratio", "pad",
           "--output_dir", str(out), *extra])


def test_stage1_writes_projector_checkpoints_that_load(base_args, demo_data, tiny_llm, tmp_path):
    out = tmp_path / "pretrain"
    stage1(base_args, demo_data, out, "--max_steps", "4", "--save_steps", "2")
    for path in (out / "checkpoint-2", out):
        assert checkpoint_kind(str(path)) == "projector"
        weights = torch.load(path / "mm_projector.bin", weights_only=True)
        assert weights and all(k.startswith("model.mm_projector.") for k in weights)
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == "llava_phi" and config["mm_projector_type"] == "mlp2x_gelu"
        assert config["tokenizer_model_max_length"] == 256 and "quantization_config" not in config
        assert "conv_template" not in config  # plain captions are not how the finished model is asked
        assert (path / "preprocessor_config.json").exists()
    _, model, processor, context = load_pretrained_model(str(out), tiny_llm("phi"), device="cpu")
    assert context == 256 and processor is not None
    final = torch.load(out / "mm_projector.bin", weights_only=True)
    state = model.state_dict()
    for key, value in final.items():
        assert torch.equal(state[key], value)
    # The LLM stayed frozen: its weights are the base checkpoint's.
    base = load_file(os.path.join(tiny_llm("phi"), "model.safetensors"))
    key = next(k for k in base if k.endswith("layers.0.mlp.fc1.weight"))
    assert torch.equal(state[key], base[key])


def test_lora_eval_loss_checkpoints_and_merge(base_args, demo_data, tiny_llm, tmp_path):
    out = tmp_path / "lora"
    lora(base_args, demo_data, out, "--max_steps", "4", "--save_steps", "2", "--version", "vicuna_v1",
         "--eval_data_path", demo_data["finetune"], "--eval_strategy", "steps", "--eval_steps", "2")
    evals = [e["eval_loss"] for e in log_history(out) if "eval_loss" in e]
    assert len(evals) >= 2 and all(v > 0 for v in evals)
    # Training monitors under LoRA: the adapters are the LLM group, the projector trains, the tower does not.
    trained = [e for e in log_history(out) if "loss" in e]
    assert all(e["grad_norm/llm"] > 0 and e["grad_norm/projector"] > 0 and e["monitor/image_text_rms_ratio"] > 0
               and "grad_norm/vision_tower" not in e for e in trained)
    for path in (out / "checkpoint-2", out):
        assert checkpoint_kind(str(path)) == "lora"
        non_lora = torch.load(path / "non_lora_trainables.bin", weights_only=True)
        assert non_lora and all("mm_projector" in k for k in non_lora)
        adapter = load_file(path / "adapter_model.safetensors")
        assert adapter and not any("vision_tower" in k or "mm_projector" in k or "lm_head" in k for k in adapter)
        load_pretrained_model(str(path), device="cpu")  # base taken from adapter_config.json
    # Asked the way it was trained (not phi's default template), before and after the merge.
    assert InferenceEngine.from_pretrained(str(out)).conv_mode == "vicuna_v1"
    merged = tmp_path / "merged"
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "merge_lora_weights.py"), "--model-path", str(out),
                    "--model-base", tiny_llm("phi"), "--save-model-path", str(merged)], check=True, capture_output=True)
    assert checkpoint_kind(str(merged)) == "full"
    assert InferenceEngine.from_pretrained(str(merged)).conv_mode == "vicuna_v1"
    _, a, _, _ = load_pretrained_model(str(out), tiny_llm("phi"), device="cpu")
    _, b, _, _ = load_pretrained_model(str(merged), device="cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_full_finetune_loss_goes_down_and_tower_stays_frozen(base_args, demo_data, tiny_clip, tmp_path):
    out = tmp_path / "full"
    train([*base_args, "--data_path", demo_data["finetune"], "--learning_rate", "2e-3", "--output_dir", str(out),
           "--max_steps", "12", "--save_steps", "12", "--gradient_checkpointing", "True",
           "--group_by_modality_length", "True", "--mm_projector_lr", "1e-3"])
    history = list(losses(out).values())
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 - 0.5
    assert checkpoint_kind(str(out)) == "full"
    _, model, _, _ = load_pretrained_model(str(out), device="cpu")
    clip = load_file(os.path.join(tiny_clip, "model.safetensors"))
    tower = model.get_vision_tower().vision_tower.state_dict()
    key = "encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(tower[key], clip[key])


def test_qlora_4bit(base_args, demo_data, tiny_llm, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    lora(base_args, demo_data, out, "--bits", "4", "--max_steps", "3", "--save_steps", "3")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert all(e["grad_norm/llm"] > 0 and e["monitor/image_rms"] > 0 for e in log_history(out) if "loss" in e)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    _, model, _, _ = load_pretrained_model(str(out), device="cpu", load_4bit=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    _, merged, _, _ = load_pretrained_model(str(out), device="cpu")  # full precision, merged
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())


@pytest.mark.parametrize("mode", ["projector", "lora"])
def test_resume_continues_like_an_uninterrupted_run(base_args, demo_data, tmp_path, mode):
    run = stage1 if mode == "projector" else lora
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(base_args, demo_data, whole, "--max_steps", "6", "--save_steps", "3")
    run(base_args, demo_data, resumed, "--max_steps", "6", "--save_steps", "3",
        "--resume_from_checkpoint", str(whole / "checkpoint-3"))
    a, b = losses(whole), losses(resumed)
    # The resumed history is checkpoint-3's (steps 1-3) plus steps 4-6, each once: no step was redone.
    assert [e["step"] for e in log_history(resumed) if "loss" in e] == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-4)
