"""scripts/demo.sh end to end in quick mode: every stage runs and the summary reports accuracy vs baseline.

Quick mode trains a few steps on tiny sizes, so only the plumbing is checked, not the accuracy
(the full default run measures that; see README). Takes about 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def test_demo_quick_runs_every_stage_and_prints_the_summary(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "DEMO_QUICK": "1", "DEMO_DIR": str(out)}
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "demo.sh")], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    summary = proc.stdout[proc.stdout.index("=== demo summary") :]
    accuracy = re.search(r"Accuracy: (\d+\.\d+)", summary)
    baseline = re.search(r"Majority baseline: (\d+\.\d+)", summary)
    assert accuracy and baseline, summary
    assert 0.0 <= float(accuracy.group(1)) <= 100.0 and 0.0 < float(baseline.group(1)) < 100.0
    for stage in ("assets", "stage 1 (pretrain)", "stage 2 (finetune)", "model_vqa", "score", "total"):
        assert re.search(rf"{re.escape(stage)}\s+\d+ s", summary), (stage, summary)

    # Every stage left its files: stage 1 a full model (the LLM and tower learn too), stage 2 the final model.
    stage1, stage2 = out / "llava-phi-demo-pretrain", out / "llava-phi-demo-finetune"
    for checkpoint in (stage1, stage2):
        assert (checkpoint / "config.json").exists() and (checkpoint / "model.safetensors").exists()
        assert (checkpoint / "preprocessor_config.json").exists()
    questions = [json.loads(line) for line in open(out / "data" / "eval_questions.jsonl")]
    answers = [json.loads(line) for line in open(out / "answers.jsonl")]
    assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in questions)
    scores = json.load(open(out / "scores.json"))
    assert abs(scores["overall"] - float(accuracy.group(1))) < 0.01

    # The image ablation table closes the summary: real accuracy is the score above, blank and shuffled beside it.
    ablation = json.load(open(out / "ablation" / "ablation.json"))
    assert ablation["conditions"]["real"]["overall"] == scores["overall"]
    assert set(ablation["conditions"]) == {"real", "blank", "shuffled"}
    row = re.search(r"^\s+overall\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)$", summary, re.M)
    assert row and float(row.group(1)) == scores["overall"], summary
    assert ablation["verdict"] in summary
