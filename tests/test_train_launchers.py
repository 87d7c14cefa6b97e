"""The shell launchers end to end: 2 DeepSpeed processes on the CPU, ZeRO-2 and ZeRO-3 (slow, ≈4 min).

Runs with environment variables pointing at the session's tiny checkpoints and a few steps;
the defaults (nothing set) are the same code path with more steps (see docs/training.md).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from helpers import launcher_env
from llava.model.builder import load_pretrained_model
from llava.model.layout import checkpoint_kind

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def launch(tiny_llm, tiny_clip, demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")

    def run(script: str, name: str, **env):
        out = root / name
        variables = launcher_env(tiny_llm, tiny_clip, demo_data, root, OUTPUT_DIR=str(out), **env)
        proc = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=variables, cwd=REPO,
                              capture_output=True, text=True, timeout=400, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"checkpoint in {out}" in proc.stdout
        log = proc.stdout + proc.stderr
        # No silent minutes compiling DeepSpeed ops on the CPU, and no deprecation noise from the libraries.
        built = os.listdir(root / "torch_extensions") if (root / "torch_extensions").exists() else []
        assert not built and "built successfully" not in log, f"DeepSpeed compiled {built}"
        assert "FutureWarning" not in log, log[-3000:]
        return out, log

    return run


def test_pretrain_then_lora_zero3_picks_up_the_projector(launch, tiny_llm):
    pre, _ = launch("pretrain.sh", "pretrain")  # ZeRO-2
    assert checkpoint_kind(str(pre)) == "projector" and (pre / "checkpoint-1" / "mm_projector.bin").exists()
    projector = pre / "mm_projector.bin"
    out, log = launch("finetune_lora.sh", "lora", PRETRAIN_MM_MLP_ADAPTER=str(projector), LORA_R="8", LORA_ALPHA="16")
    assert "ZeRO-3" in log and f"loaded the stage-1 projector from {projector}" in log
    for path in (out / "checkpoint-1", out):
        assert checkpoint_kind(str(path)) == "lora"
        assert (path / "vision_tower" / "model.safetensors").exists()  # written by rank 0 alone under ZeRO-3
        load_pretrained_model(str(path), tiny_llm("phi"), device="cpu")
    # Under ZeRO-3 the saved projector is the gathered, full-size one.
    stage1 = torch.load(projector, weights_only=True)
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    for key, value in stage1.items():
        assert saved["base_model.model." + key].shape == value.shape


def test_full_finetune_zero3(launch):
    out, log = launch("finetune.sh", "full")
    assert "ZeRO-3" in log
    assert checkpoint_kind(str(out)) == "full"
    _, model, _, _ = load_pretrained_model(str(out), device="cpu")
    assert model.get_model().mm_projector[0].weight.numel() > 0


def test_qlora_zero2(launch, tiny_llm):
    out, log = launch("finetune_qlora.sh", "qlora", LORA_R="8", LORA_ALPHA="16")
    assert "ZeRO-2" in log
    assert checkpoint_kind(str(out)) == "lora"
    load_pretrained_model(str(out), tiny_llm("phi"), device="cpu")
