"""benchmarks/small_objects: its rows follow the contract, its AnyRes case asks for what it names, its probe runs.

No training here (a case takes minutes); the figures themselves are in benchmarks/README.md.
"""

from __future__ import annotations

import torch

from benchmarks import common, small_objects


def fake_outcome(case: str) -> dict:
    per = {"color": 99.0, "presence": 55.0, "shape": 50.0}
    conditions = {name: {"overall": value, "per_category": {k: v * value / 100 for k, v in per.items()}}
                  for name, value in (("real", 68.0), ("blank", 37.0), ("shuffled", 33.0))}
    return {"case": case, "ablation": {"conditions": conditions, "majority_baseline": {"overall": 37.2}},
            "train_seconds": 500.0, "eval_seconds": 60.0, "load": (3.0, 4.5)}


def test_rows_and_table_carry_every_condition_and_question_type():
    outcomes = [fake_outcome("pad"), fake_outcome("anyres")]
    rows = [row for o in outcomes for row in small_objects.rows_for(o, 1000)]
    for row in rows:
        common.check_row(row)
        assert row["benchmark"] == "small_objects" and row["config"]["steps"] == 1000
    metrics = {(r["case"], r["metric"]) for r in rows}
    for case in ("pad", "anyres"):
        for condition in ("real", "blank", "shuffled"):
            assert (case, f"accuracy_{condition}") in metrics
            assert {(case, f"{condition}_{kind}") for kind in ("color", "presence", "shape")} <= metrics
    real = next(r for r in rows if r["metric"] == "accuracy_real")
    assert real["target"] == ">= 90" and real["met"] is False
    table = small_objects.table(outcomes)
    assert "shape (r/b/s)" in table and "3.0-4.5" in table and table.count("\n") == 2


def test_each_case_launches_both_stages_with_its_view_and_one_feature_cache(tmp_path, monkeypatch):
    """Captions then questions from that checkpoint; AnyRes (or pad) and the cache reach both stages."""
    import json
    import os
    import subprocess

    launches = []
    monkeypatch.setattr(small_objects, "_train", lambda script, launch, env, log_path, what: launches.append(
        (script, {**env, **launch})) or 1.0)

    def fake_ablation(command, **kwargs):
        out_dir = command[command.index("--out-dir") + 1]
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "ablation.json"), "w") as f:
            json.dump(fake_outcome("x")["ablation"], f)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(small_objects.subprocess, "run", fake_ablation)
    data = {"finetune": str(tmp_path / "data" / "finetune.json"), "eval_questions_jsonl": "q", "image_folder": "i",
            "eval_annotations": "a"}
    for case, view in (("anyres", "anyres"), ("pad", None)):
        launches.clear()
        small_objects.run_case(case, data, str(tmp_path), 1300, caption_steps=500, log=lambda msg: None, seed=3)
        (first, stage1), (second, stage2) = launches
        assert (first, second) == ("scripts/pretrain.sh", "scripts/finetune.sh")
        assert (stage1["MAX_STEPS"], stage2["MAX_STEPS"]) == ("500", "1300")
        assert stage2["MODEL_PATH"] == stage1["OUTPUT_DIR"]  # the whole caption-stage model goes on
        for env in (stage1, stage2):
            assert env["PRESET"] == "scratch" and env.get("IMAGE_ASPECT_RATIO") == view
            assert env["FEATURE_CACHE"] == stage1["FEATURE_CACHE"] and "--seed 3" in env["EXTRA_ARGS"]


def test_shape_probe_learns_a_pattern_it_can_see():
    # Class = which patch holds a bright token: readable by max over patches after a per-patch MLP.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, 12, generator=generator) * 0.1
    y = torch.randint(0, 3, (300,), generator=generator)
    x[torch.arange(300), 0, y] += 3.0
    accuracy = small_objects.probe_shape(x[:200], y[:200], x[200:], y[200:], "max", steps=300, batch=16)
    assert accuracy > 90
