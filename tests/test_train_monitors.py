"""Training monitors (llava/train/monitors.py): the metric functions, and what a short run logs.

The 2-process ZeRO-2 / ZeRO-3 / feature-cache runs of tests/test_train_lockstep.py check that the
monitors equal one process's (slow tests); LoRA and QLoRA runs are checked in tests/test_train_run.py.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llava.train import monitors
from llava.train.train import train

from test_train_run import base_args, log_history  # noqa: F401  (base_args is a fixture)

KEYS = ("monitor/image_rms", "monitor/text_rms", "monitor/image_text_rms_ratio", "monitor/image_spread")


def test_feature_metrics_equal_a_hand_computation():
    stats = monitors.FeatureStats(hidden=2)
    images = torch.stack([torch.full((2, 2), 3.0), torch.full((2, 2), 1.0)])  # two images, two patches each
    stats.add_images(images)
    stats.add_text(torch.full((4, 2), 0.5))
    got = stats.metrics()
    image_rms = math.sqrt((9 * 4 + 1 * 4) / 8)
    assert got["monitor/image_rms"] == pytest.approx(image_rms)
    assert got["monitor/text_rms"] == pytest.approx(0.5)
    assert got["monitor/image_text_rms_ratio"] == pytest.approx(image_rms / 0.5)
    # Per-image means (3, 3) and (1, 1): std 1 in each dimension, over the RMS.
    assert got["monitor/image_spread"] == pytest.approx(1 / image_rms)

    # Summed in parts (micro-batches, ranks) the sums are the whole batch's.
    parts = monitors.FeatureStats(hidden=2)
    parts.add_images(images[:1])
    parts.add_images(images[1:])
    parts.add_text(torch.full((4, 2), 0.5))
    assert parts.metrics() == pytest.approx(got)

    same = monitors.FeatureStats(hidden=2)
    same.add_images(torch.stack([images[0], images[0]]))
    assert same.metrics()["monitor/image_spread"] == 0.0  # collapse: every image the same features
    one = monitors.FeatureStats(hidden=2)
    one.add_images(images[:1])
    assert set(one.metrics()) == {"monitor/image_rms"}  # no text, a single image: nothing else to say


def test_group_grad_norms_split_projector_tower_and_llm_and_skip_frozen_groups():
    model = nn.ModuleDict({"mm_projector": nn.Linear(2, 2), "vision_tower": nn.Linear(2, 2), "layers": nn.Linear(2, 2)})
    for name, param in model.named_parameters():
        param.grad = torch.full_like(param, {"mm_projector": 1.0, "vision_tower": 2.0, "layers": 3.0}[name.split(".")[0]])
    norms = monitors.group_grad_norms(model.named_parameters())
    assert norms == pytest.approx({"grad_norm/projector": math.sqrt(6), "grad_norm/vision_tower": 2 * math.sqrt(6),
                                   "grad_norm/llm": 3 * math.sqrt(6)})
    model["vision_tower"].requires_grad_(False)
    assert "grad_norm/vision_tower" not in monitors.group_grad_norms(model.named_parameters())
    assert monitors.param_module("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") == "llm"


def run(base_args, demo_data, out, *extra):
    train([*base_args, "--data_path", demo_data["finetune"], "--learning_rate", "1e-3", "--output_dir", str(out),
           "--save_strategy", "no", *extra])
    return [e for e in log_history(out) if "loss" in e]


def test_logging_steps_carry_the_monitors_measured_before_clipping(base_args, demo_data, tmp_path):
    logged = run(base_args, demo_data, tmp_path / "out", "--max_steps", "4", "--logging_steps", "2",
                 "--gradient_accumulation_steps", "2", "--gradient_checkpointing", "True", "--max_grad_norm", "0.5")
    assert [e["step"] for e in logged] == [2, 4]
    for entry in logged:
        for key in (*KEYS, "grad_norm/projector", "grad_norm/llm"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (key, entry)
        assert "grad_norm/vision_tower" not in entry  # the tower is frozen
        # The groups add up to the Trainer's own pre-clipping norm, which is above --max_grad_norm: they were
        # taken before clipping.
        total = math.hypot(entry["grad_norm/projector"], entry["grad_norm/llm"])
        assert total == pytest.approx(entry["grad_norm"], rel=1e-4) and total > 0.5
        assert 1 < entry["monitor/image_text_rms_ratio"] < monitors.RATIO_LIMIT  # this tiny model: ~10x


def test_frozen_projector_has_no_gradient_norm_and_a_training_tower_has_one(base_args, demo_data, tmp_path):
    logged = run(base_args, demo_data, tmp_path / "tower", "--max_steps", "2", "--train_modules", "llm,vision_tower")
    assert all("grad_norm/projector" not in e and e["grad_norm/vision_tower"] > 0 and e["grad_norm/llm"] > 0
               for e in logged)
    assert all(e["monitor/image_rms"] > 0 for e in logged)  # the frozen projector's output is still measured


def test_feature_cache_runs_measure_the_projector_and_the_flag_turns_monitors_off(base_args, demo_data, tmp_path):
    cached = run(base_args, demo_data, tmp_path / "cache", "--max_steps", "2", "--train_modules", "llm",
                 "--vision_feature_cache", str(tmp_path / "features"))
    assert all(e["monitor/image_rms"] > 0 and "grad_norm/projector" not in e for e in cached)
    off = run(base_args, demo_data, tmp_path / "off", "--max_steps", "2", "--mm_monitors", "False")
    assert off and not any(k.startswith(("monitor/", "grad_norm/")) for e in off for k in e)


def test_an_out_of_range_ratio_or_a_collapsed_spread_warns_once(caplog):
    watcher = monitors.TrainingMonitors.__new__(monitors.TrainingMonitors)
    watcher.trainer, watcher.warned = SimpleNamespace(is_world_process_zero=lambda: True), set()
    blown = {"monitor/image_rms": 1400.0, "monitor/text_rms": 0.02, "monitor/image_text_rms_ratio": 70000.0,
             "monitor/image_spread": 1e-5}
    with caplog.at_level(logging.WARNING, logger="llava.train.monitors"):
        watcher._warn(blown)
        watcher._warn(blown)
        watcher._warn({"monitor/image_text_rms_ratio": 1.0, "monitor/image_spread": 0.3})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "7e+04 times the RMS of the text embeddings" in messages[0] and "Reading the monitors" in messages[0]
    assert "image spread 1e-05" in messages[1] and "Reading the monitors" in messages[1]
