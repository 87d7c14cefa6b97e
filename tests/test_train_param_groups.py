"""Per-module learning rates: --mm_projector_lr and --mm_vision_tower_lr reach the optimizer's groups."""

from __future__ import annotations

import pytest

from llava.train.arguments import parse_args, resolve_train_modules
from llava.train.recipes import build_model
from llava.train.monitors import param_module
from llava.train.trainer import LLaVATrainer


def optimizer_for(tiny_llm, tiny_clip, demo_data, tmp_path, *extra):
    args = [
        "--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path", demo_data["finetune"],
        "--mm_projector_type", "mlp2x_gelu", "--output_dir", str(tmp_path), "--report_to", "none",
        "--learning_rate", "1e-3", "--weight_decay", "0.1", *extra,
    ]
    model_args, data_args, training_args = parse_args(args)
    modules = resolve_train_modules(model_args, training_args)
    model, tokenizer = build_model(model_args, data_args, training_args, modules)
    trainer = LLaVATrainer(model=model, args=training_args, processing_class=tokenizer)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            lr_of[names[id(param)]] = (group["lr"], group["weight_decay"])
    return model, lr_of


def test_tower_projector_and_llm_get_their_own_rates(tiny_llm, tiny_clip, demo_data, tmp_path):
    model, lr_of = optimizer_for(
        tiny_llm, tiny_clip, demo_data, tmp_path,
        "--train_modules", "projector,llm,vision_tower", "--mm_vision_tower_lr", "1e-5", "--mm_projector_lr", "2e-4",
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(lr_of) == sorted(trainable)  # every trainable parameter, each once
    seen = {param_module(n) for n in lr_of}
    assert seen == {"projector", "vision_tower", "llm"}
    for name, (lr, _) in lr_of.items():
        assert lr == {"projector": 2e-4, "vision_tower": 1e-5, "llm": 1e-3}[param_module(name)], name
    # weight decay keeps HF's split (no decay on biases and norms) inside each module's groups
    assert {wd for n, (_, wd) in lr_of.items() if n.endswith("bias")} == {0.0}
    assert 0.1 in {wd for _, wd in lr_of.values()}


def test_tower_rate_alone_leaves_the_rest_at_learning_rate(tiny_llm, tiny_clip, demo_data, tmp_path):
    _, lr_of = optimizer_for(
        tiny_llm, tiny_clip, demo_data, tmp_path, "--train_modules", "projector,llm,vision_tower", "--mm_vision_tower_lr", "0",
    )
    for name, (lr, _) in lr_of.items():
        assert lr == (0.0 if param_module(name) == "vision_tower" else 1e-3), name


def test_lora_names_are_grouped_too(tiny_llm, tiny_clip, demo_data, tmp_path):
    model, lr_of = optimizer_for(
        tiny_llm, tiny_clip, demo_data, tmp_path, "--lora_enable", "True", "--lora_r", "4",
        "--train_modules", "projector,lora,vision_tower", "--mm_vision_tower_lr", "1e-5", "--mm_projector_lr", "2e-4",
    )
    assert any(n.startswith("base_model.") for n in lr_of)  # peft's prefixes
    assert any("lora_" in n for n in lr_of)
    for name, (lr, _) in lr_of.items():
        expected = {"projector": 2e-4, "vision_tower": 1e-5, "llm": 1e-3}[param_module(name)]
        assert lr == expected, name
    assert {param_module(n) for n in lr_of if "lora_" in n} == {"llm"}


def test_without_module_rates_the_optimizer_is_hfs(tiny_llm, tiny_clip, demo_data, tmp_path):
    _, lr_of = optimizer_for(tiny_llm, tiny_clip, demo_data, tmp_path, "--train_modules", "projector,llm,vision_tower")
    assert {lr for lr, _ in lr_of.values()} == {1e-3}


@pytest.mark.parametrize("flag", ["--mm_vision_tower_lr", "--mm_projector_lr"])
def test_negative_rate_is_refused(tiny_llm, tiny_clip, demo_data, tmp_path, flag):
    with pytest.raises(ValueError, match=f"{flag} -1"):
        parse_args(["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path",
                    demo_data["finetune"], "--output_dir", str(tmp_path), flag, "-1"])


@pytest.mark.slow
def test_tower_rate_holds_under_zero3_through_the_launcher(tiny_llm, tiny_clip, demo_data, tmp_path):
    """2 DeepSpeed processes, ZeRO-3 (finetune.sh's default): a tower at rate 0 comes back bit for bit, the LLM does not."""
    import os
    import subprocess

    import torch
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    from llava.model.builder import load_pretrained_model

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out"
    env = {
        **os.environ, "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip,
        "DATA_DIR": os.path.dirname(demo_data["finetune"]), "IMAGE_FOLDER": demo_data["image_folder"],
        "RUN_NAME": "groups", "OUTPUT_DIR": str(out), "MAX_STEPS": "2", "SAVE_STEPS": "100", "BATCH_SIZE": "2",
        "NUM_GPUS": "2", "LR": "1e-2",
        "EXTRA_ARGS": "--train_modules projector,llm,vision_tower --mm_vision_tower_lr 0 --warmup_steps 0",
    }
    proc = subprocess.run(["bash", os.path.join(repo, "scripts", "finetune.sh")], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ZeRO-3" in proc.stdout
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as saved:  # the tower is read back from the checkpoint
        assert any("vision_tower" in key for key in saved.keys())
    _, model, _, _ = load_pretrained_model(str(out), device="cpu")
    original_tower = CLIPVisionModel.from_pretrained(tiny_clip).state_dict()
    trained_tower = model.get_vision_tower().vision_tower.state_dict()
    assert original_tower.keys() == trained_tower.keys()
    for key, value in original_tower.items():
        assert torch.equal(trained_tower[key], value), key
    original_llm = AutoModelForCausalLM.from_pretrained(tiny_llm("phi")).get_input_embeddings().weight
    assert not torch.equal(model.get_input_embeddings().weight, original_llm)
