"""PRESET=scratch: the recipe llava.train.train parses from the flags the launchers pass.

A stand-in `deepspeed` on PATH hands the launcher's command line to llava.train.arguments (the parser
train.py uses) and prints what it resolved, so the preset is checked in seconds without training.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_DEEPSPEED = f"""#!/bin/sh
# deepspeed --num_gpus N --master_port P llava/train/train.py FLAGS...
shift 5
exec {sys.executable} -c '
import json, sys
from llava.train.arguments import parse_args, resolve_train_modules
model_args, data_args, training_args = parse_args(sys.argv[1:])
print("RESOLVED " + json.dumps({{
    "train_modules": sorted(resolve_train_modules(model_args, training_args)),
    "max_steps": training_args.max_steps,
    "learning_rate": training_args.learning_rate,
    "batch_size": training_args.per_device_train_batch_size,
    "scheduler": str(training_args.lr_scheduler_type.value),
    "warmup_steps": training_args.warmup_steps,
    "scheduler_kwargs": training_args.lr_scheduler_kwargs,
    "data_path": data_args.data_path,
    "version": model_args.version,
    "image_aspect_ratio": data_args.image_aspect_ratio,
    "mm_patch_merge_type": model_args.mm_patch_merge_type,
    "image_grid_pinpoints": data_args.image_grid_pinpoints,
    "vision_feature_cache": training_args.vision_feature_cache,
}}))
' "$@"
"""


@pytest.fixture
def run_preset(tmp_path, tiny_llm, tiny_clip, demo_data):
    """Run finetune.sh with PRESET=scratch and `env`; returns the process and the parsed recipe (or None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "deepspeed"
    fake.write_text(FAKE_DEEPSPEED)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    def run(script="finetune.sh", **env):
        full_env = {
            **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PRESET": "scratch",
            "MODEL_PATH": tiny_llm("phi"), "VISION_TOWER": tiny_clip,
            "DATA_DIR": os.path.dirname(demo_data["finetune"]), "IMAGE_FOLDER": demo_data["image_folder"],
            "OUTPUT_DIR": str(tmp_path / "out"), **env,
        }
        proc = subprocess.run(["bash", os.path.join(REPO, "scripts", script)], env=full_env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        resolved = [json.loads(line[len("RESOLVED "):]) for line in proc.stdout.splitlines() if line.startswith("RESOLVED ")]
        assert len(resolved) <= 1
        return proc, resolved[0] if resolved else None

    return run


def test_scratch_is_a_frozen_tower_and_a_rate_that_holds_then_decays_over_the_second_half(run_preset):
    proc, recipe = run_preset()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert recipe == {
        "train_modules": ["llm", "projector"], "max_steps": 2000, "learning_rate": 2e-3, "batch_size": 32,
        "scheduler": "warmup_stable_decay", "warmup_steps": 100, "scheduler_kwargs": {"num_decay_steps": 1000},
        "data_path": os.path.join(os.path.dirname(recipe["data_path"]), "finetune.json"), "version": recipe["version"],
        "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat", "image_grid_pinpoints": None,
        "vision_feature_cache": None,
    }


def test_scratch_schedule_scales_with_the_steps(run_preset):
    _, recipe = run_preset(MAX_STEPS="300")
    assert (recipe["warmup_steps"], recipe["scheduler_kwargs"]) == (30, {"num_decay_steps": 150})
    _, recipe = run_preset(MAX_STEPS="300", DECAY_STEPS="100", LR="1e-3")
    assert (recipe["learning_rate"], recipe["scheduler_kwargs"]) == (1e-3, {"num_decay_steps": 100})


def test_scratch_schedule_follows_hfs_scheduler_from_those_flags(run_preset):
    """What the parsed flags give HF's get_scheduler: warm-up, a plateau, then a decay that reaches 0."""
    import torch
    from transformers.optimization import get_scheduler

    _, recipe = run_preset(MAX_STEPS="200")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe["learning_rate"])
    scheduler = get_scheduler(recipe["scheduler"], optimizer, num_warmup_steps=recipe["warmup_steps"],
                              num_training_steps=recipe["max_steps"], scheduler_specific_kwargs=recipe["scheduler_kwargs"])
    rates = []
    for _ in range(recipe["max_steps"]):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[20] == rates[99] == 2e-3  # warm-up 20 steps, constant to the half
    assert 0.0 < rates[150] < 2e-3 and rates[-1] < 1e-5  # cosine decay over the last 100 steps


@pytest.mark.parametrize("env, message", [
    ({"MAX_STEPS": "-1"}, "PRESET=scratch with MAX_STEPS=-1: set DECAY_STEPS"),
    ({"MAX_STEPS": "300", "DECAY_STEPS": "290"}, "DECAY_STEPS=290 and 30 warm-up steps do not fit in MAX_STEPS=300; give at most 270"),
])
def test_scratch_refuses_a_schedule_it_cannot_make(run_preset, env, message):
    proc, recipe = run_preset(**env)
    assert proc.returncode == 2 and recipe is None
    assert message in proc.stderr


def test_scratch_caption_stage_trains_the_llm_too(run_preset):
    """The stage 1 that small objects need (docs/training.md, "Why small objects were not learnt"): captions,
    plain template, and the LLM learning with the projector (pretrain.sh alone would train the projector only)."""
    proc, recipe = run_preset("pretrain.sh", MAX_STEPS="1000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert recipe["train_modules"] == ["llm", "projector"]
    assert os.path.basename(recipe["data_path"]) == "pretrain.json" and recipe["version"] == "plain"
    assert (recipe["max_steps"], recipe["learning_rate"], recipe["scheduler_kwargs"]) == (1000, 2e-3, {"num_decay_steps": 500})


@pytest.mark.parametrize("script, stage_view", [("pretrain.sh", "square"), ("finetune.sh", "pad")])
def test_anyres_and_the_feature_cache_reach_both_stages(run_preset, tmp_path, script, stage_view):
    """The small-object recipe's options: IMAGE_ASPECT_RATIO=anyres (LLaVA-NeXT's tiles, spatial_unpad, up to
    2x2 tiles unless GRID_PINPOINTS says otherwise) and FEATURE_CACHE win over each stage's own view."""
    _, recipe = run_preset(script, MAX_STEPS="100")
    assert (recipe["image_aspect_ratio"], recipe["vision_feature_cache"]) == (stage_view, None)
    cache = str(tmp_path / "cache")
    _, recipe = run_preset(script, MAX_STEPS="100", IMAGE_ASPECT_RATIO="anyres", FEATURE_CACHE=cache)
    assert recipe["image_aspect_ratio"] == "anyres" and recipe["mm_patch_merge_type"] == "spatial_unpad"
    assert recipe["image_grid_pinpoints"] == "(1x1),...,(2x2)" and recipe["vision_feature_cache"] == cache
    _, recipe = run_preset(script, MAX_STEPS="100", IMAGE_ASPECT_RATIO="anyres_max_4", GRID_PINPOINTS="(1x1),...,(3x3)")
    assert (recipe["image_aspect_ratio"], recipe["image_grid_pinpoints"]) == ("anyres_max_4", "(1x1),...,(3x3)")
    _, recipe = run_preset(script, MAX_STEPS="100", IMAGE_ASPECT_RATIO="pad")
    assert (recipe["image_aspect_ratio"], recipe["mm_patch_merge_type"]) == ("pad", "flat")
