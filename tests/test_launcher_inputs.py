"""The training launchers check the paths and names the user set before DeepSpeed starts (seconds, not ~20 s),
and the error names the environment variable the user set, in one line."""

from __future__ import annotations

import os
import subprocess

import pytest

from llava.model.registry import backbone_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(script: str, **env) -> subprocess.CompletedProcess:
    variables = {**os.environ, "NUM_GPUS": "1", **env}
    return subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=variables, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, script: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: "), proc.stderr
    # Nothing was launched: no DeepSpeed launcher lines, no training.
    assert "deepspeed" not in (proc.stdout + proc.stderr).lower() and "== training" not in proc.stdout
    return lines[0]


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune_qlora.sh"])
def test_misspelled_model_path_is_named(script, tiny_clip, demo_data):
    proc = launch(script, MODEL_PATH="checkpoints/llava-phy", VISION_TOWER=tiny_clip,
                  DATA_DIR=os.path.dirname(demo_data["pretrain"]))
    line = one_line_error(proc, script)
    assert line.startswith(f"{script}: MODEL_PATH=checkpoints/llava-phy: no such folder (relative paths start at {REPO})")
    assert "--model_name_or_path" not in line


def test_missing_vision_tower_and_data_are_named(tiny_llm, tiny_clip, demo_data, tmp_path):
    data_dir = os.path.dirname(demo_data["pretrain"])
    line = one_line_error(launch("pretrain.sh", MODEL_PATH=tiny_llm("phi"), VISION_TOWER="openai/clip-vit-nope",
                                 DATA_DIR=data_dir), "pretrain.sh")
    assert "VISION_TOWER=openai/clip-vit-nope: no such folder" in line and "Hugging Face cache" in line
    line = one_line_error(launch("pretrain.sh", MODEL_PATH=tiny_llm("phi"), VISION_TOWER=tiny_clip,
                                 DATA_DIR=str(tmp_path)), "pretrain.sh")
    assert line == (f"pretrain.sh: DATA_DIR={tmp_path} has no pretrain.json (relative paths start at {REPO}); set "
                    "DATA_PATH to your training JSON, or unset DATA_DIR for the generated demo data")
    line = one_line_error(launch("finetune_qlora.sh", MODEL_PATH=tiny_llm("phi"), VISION_TOWER=tiny_clip,
                                 DATA_DIR=data_dir, DATA_PATH=str(tmp_path / "train.json")), "finetune_qlora.sh")
    assert line.startswith(f"finetune_qlora.sh: DATA_PATH={tmp_path / 'train.json'}: no such file")
    line = one_line_error(launch("pretrain.sh", MODEL_PATH=tiny_llm("phi"), VISION_TOWER=tiny_clip,
                                 DATA_DIR=data_dir, IMAGE_FOLDER=str(tmp_path / "imgs")), "pretrain.sh")
    assert line.startswith(f"pretrain.sh: IMAGE_FOLDER={tmp_path / 'imgs'}: no such folder")
    line = one_line_error(launch("pretrain.sh", MODEL_PATH=tiny_llm("phi"), VISION_TOWER=tiny_clip,
                                 DATA_DIR=data_dir, ZERO="5"), "pretrain.sh")
    assert line == "pretrain.sh: ZERO=5: no zero5.json; use ZERO=2, 3 or 3_offload"


def test_unknown_backbone_lists_the_registered_ones():
    proc = launch("pretrain.sh", BACKBONE="falcon")
    line = one_line_error(proc, "pretrain.sh")
    assert line.startswith(f"pretrain.sh: BACKBONE=falcon is not a supported backbone; supported: {', '.join(backbone_names())} ")
    assert "invalid choice" not in proc.stderr
    assert not os.path.exists(os.path.join(REPO, "checkpoints", "tiny-falcon"))


def test_demo_refuses_an_unknown_backbone_before_building_anything(tmp_path):
    proc = launch("demo.sh", BACKBONE="falcon", DEMO_DIR=str(tmp_path / "demo"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"demo.sh: BACKBONE=falcon is not a supported backbone; supported: {', '.join(backbone_names())}"
    assert not (tmp_path / "demo").exists()
