"""benchmarks/small_objects: its rows follow the contract, its AnyRes case asks for what it names, its probe runs.

No training here (a case takes minutes); the figures themselves are in benchmarks/README.md.
"""

from __future__ import annotations

import shlex

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


def test_anyres_case_asks_for_tiles_and_pad_for_one_view():
    from llava.train.arguments import parse_args

    base = ["--model_name_or_path", "m", "--vision_tower", "t", "--data_path", "d", "--output_dir", "o",
            "--image_aspect_ratio", "pad"]  # the launcher's stage-2 default comes first; EXTRA_ARGS last
    _, data_args, _ = parse_args(base + shlex.split(small_objects.CASES["anyres"]["EXTRA"]))
    assert data_args.image_aspect_ratio == "anyres"
    assert "EXTRA" not in small_objects.CASES["pad"]


def test_shape_probe_learns_a_pattern_it_can_see():
    # Class = which patch holds a bright token: readable by max over patches after a per-patch MLP.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, 12, generator=generator) * 0.1
    y = torch.randint(0, 3, (300,), generator=generator)
    x[torch.arange(300), 0, y] += 3.0
    accuracy = small_objects.probe_shape(x[:200], y[:200], x[200:], y[200:], "max", steps=300, batch=16)
    assert accuracy > 90
