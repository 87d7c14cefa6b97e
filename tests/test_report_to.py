"""`--report_to wandb` (official LLaVA's scripts use it) and `--report_to tensorboard` work offline.

Two steps of a tiny Phi each, in a subprocess (wandb starts a service process and reads its settings
from the environment). wandb and tensorboard come with the test extra; CI must have them, elsewhere a
missing one is a skip.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def need(module: str):
    if os.environ.get("CI"):
        __import__(module)  # a skip in CI would hide a broken install
    else:
        pytest.importorskip(module)


def run_training(report_to: str, out, tiny_llm, tiny_clip, demo_data, env: dict) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "llava.train.train",
        "--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip,
        "--image_folder", demo_data["image_folder"], "--data_path", demo_data["pretrain"],
        "--version", "plain", "--tune_mm_mlp_adapter", "True", "--mm_projector_type", "mlp2x_gelu",
        "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1",
        "--learning_rate", "1e-3", "--model_max_length", "256", "--save_strategy", "no", "--use_cpu", "True",
        "--output_dir", str(out), "--report_to", report_to, "--run_name", "offline-check",
    ]
    full_env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    done = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_report_to_wandb_offline_writes_a_run(tiny_llm, tiny_clip, demo_data, tmp_path):
    need("wandb")
    wandb_dir = tmp_path / "wandb-home"
    wandb_dir.mkdir()
    done = run_training("wandb", tmp_path / "out", tiny_llm, tiny_clip, demo_data, {
        "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_PROJECT": "llava-offline-check",
    })
    runs = glob.glob(str(wandb_dir / "wandb" / "offline-run-*"))
    assert len(runs) == 1, (os.listdir(wandb_dir), done.stderr[-2000:])
    # The run's log (read by `wandb sync` later; wandb >= 0.26 has no Python reader for it) holds the logged
    # steps and the run's config, LLaVA fields included: their names and values are stored as plain bytes.
    logs = glob.glob(os.path.join(runs[0], "run-*.wandb"))
    assert len(logs) == 1
    data = open(logs[0], "rb").read()
    for text in (b"train/loss", b"train/global_step", b"mm_projector_type", b"mlp2x_gelu", b"offline-check"):
        assert text in data, text
    assert "'train_loss'" in open(os.path.join(runs[0], "files", "output.log")).read()

def test_report_to_tensorboard_writes_event_file(tiny_llm, tiny_clip, demo_data, tmp_path):
    need("tensorboard")
    out = tmp_path / "out"
    run_training("tensorboard", out, tiny_llm, tiny_clip, demo_data, {})
    events = glob.glob(str(out / "**" / "events.out.tfevents.*"), recursive=True)
    assert events, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(os.path.dirname(events[0]))
    accumulator.Reload()
    losses = accumulator.Scalars("train/loss")
    assert [event.step for event in losses] == [1, 2]
    assert all(event.value > 0 for event in losses)
