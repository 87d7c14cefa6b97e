"""Benchmark harness at toy sizes: rows follow the contract, ours and HF Llava agree on the loss.

Figures are never asserted (they are machine-dependent); only structure and sanity.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import common
from benchmarks.common import ModelSizes


def check_rows(rows, benchmark):
    assert rows
    for row in rows:
        common.check_row(row)
        assert row["benchmark"] == benchmark
        assert math.isfinite(row["value"]) and row["value"] >= 0
        assert row["value"] == common.median(row["values"])
        if row["metric"] == "ratio":
            assert isinstance(row["met"], bool) and row["target"].startswith((">=", "<="))
        json.dumps(row)  # JSON-serialisable


def test_row_helpers():
    row = common.make_row("b", "c", "ratio", [1, 3, 2], "x", {"n": 1}, target=">= 2")
    assert row["value"] == 2.0 and row["values"] == [1.0, 3.0, 2.0] and row["met"] is True
    assert common.make_row("b", "c", "m", [5], "GiB", {}, target="<= 4")["met"] is False
    with pytest.raises(ValueError, match="target"):
        common.target_met(1.0, "about 2")
    table = common.format_table([row])
    assert "ratio" in table and "yes" in table
    with pytest.raises(ValueError, match="lacks"):
        common.check_row({"benchmark": "b"})


def test_train_step_losses_agree_with_hf_and_rows_are_well_formed(tmp_path):
    from benchmarks import train_step

    spec = train_step.BatchSpec(batch_size=2, text_tokens=20, length_step=4)
    rows = train_step.run(repeats=1, sizes=ModelSizes(), spec=spec, steps_per_repeat=1, measure_memory=False,
                          workdir=str(tmp_path))
    check_rows(rows, "train_step")
    check = next(r for r in rows if r["case"] == "loss_check")
    assert check["value"] <= train_step.LOSS_TOLERANCE and check["met"]
    config = check["config"]
    assert config["loss_ours"] == pytest.approx(config["loss_hf"], abs=1e-4)
    assert config["loss_ours_full_logits"] == pytest.approx(config["loss_hf"], abs=1e-4)
    assert {r["case"] for r in rows if r["metric"] == "ratio"} == {"ours_vs_hf", "ours_full_logits_vs_hf"}
    assert config["tokens_per_step"] == 2 * 20 - 4 + 2 * ModelSizes().image_tokens  # two samples, one image each

    # The same batch through the exported HF model, directly: equal losses, and padding is exercised.
    ours = train_step.load_ours(str(tmp_path / "ours"))
    hf = train_step.load_hf(str(tmp_path / "hf"))
    ours_batch, hf_batch = train_step.make_batches(spec, ModelSizes(), hf.config.image_token_id, 0)
    assert not bool(hf_batch["attention_mask"].all())
    losses = train_step.check_losses(ours, hf, ours_batch, hf_batch)
    assert losses["max_abs_diff"] <= 1e-4
    memory = train_step.memory_case("ours", str(tmp_path / "ours"), vars(ModelSizes()), vars(spec),
                                    hf.config.image_token_id, 0)
    assert memory["fwd_bwd_over_resident_mib"] >= 0 and memory["rss_loaded_mib"] > 0
    hf_batch["labels"][0, -1] = 7  # a different target: the check refuses
    with pytest.raises(RuntimeError, match="refuses to report"):
        train_step.check_losses(ours, hf, ours_batch, hf_batch)


def test_model_vqa_batch_rows_and_identical_answers(tmp_path):
    from benchmarks import model_vqa_batch

    rows = model_vqa_batch.run(repeats=1, num_questions=8, batch_sizes=(1, 8), answer_lengths={"short": 2},
                               workdir=str(tmp_path))
    check_rows(rows, "model_vqa_batch")
    assert [r["case"] for r in rows] == ["short_batch1", "short_batch8", "short_batch8_vs_batch1"]
    assert rows[-1]["metric"] == "ratio" and rows[-1]["target"] == ">= 4.0"
    assert rows[0]["config"]["distinct_answers"] > 1  # answers vary per image, so equality means something


def test_scaling_rows_and_memory_per_point():
    from benchmarks import scaling

    axes = {"batch_size": (1, 2), "images": (1, 2)}
    rows = scaling.run(repeats=1, sizes=ModelSizes(), axes=axes, measure_memory=False)
    check_rows(rows, "scaling")
    assert [r["case"] for r in rows if r["metric"] == "step_time"] == ["batch_size=1", "batch_size=2", "images=1",
                                                                       "images=2"]
    tokens = {r["case"]: r["config"]["tokens_per_step"] for r in rows if r["metric"] == "step_time"}
    assert tokens["batch_size=2"] == 2 * tokens["batch_size=1"]
    assert tokens["images=2"] - tokens["images=1"] == 2 * (ModelSizes().image_tokens - 1)  # base batch is 2

    batch = scaling.make_batch({"batch_size": 2, "text_tokens": 16, "images": 3}, ModelSizes())
    assert int((batch["input_ids"] == -200).sum()) == 6 and batch["images"].shape[0] == 6
    memory = scaling.memory_grid(vars(ModelSizes()), scaling.grid({"batch_size": (1, 2)}))
    assert len(memory["fwd_bwd_rss_mib"]) == 2 and all(m >= 0 for m in memory["fwd_bwd_rss_mib"])


def test_gpu_suite_tiny_on_cpu_and_refusal_without_cuda():
    from benchmarks import gpu

    rows = gpu.run(repeats=1, tiny=True, peak_tflops=1.0)
    check_rows(rows, "gpu")
    cases = {(r["case"], r["metric"]) for r in rows}
    assert {("full_sdpa", "tokens_per_s"), ("full_sdpa", "mfu"), ("qlora", "peak_memory")} <= cases
    qlora = next(r for r in rows if r["case"] == "qlora")
    assert 0 < qlora["config"]["trainable_params"]
    assert gpu.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops_for("Some Card") is None
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            gpu.run(repeats=1)


def test_runner_reports_missing_benchmarks_and_writes_json(tmp_path, monkeypatch, capsys):
    from benchmarks import run as runner

    def fake(suite="cpu", repeats=3):
        return [common.make_row("fake", "case", "ratio", [1.0] * repeats, "x", {}, target=">= 1.0")]

    monkeypatch.setitem(runner.SUITES, "cpu", ("no_such_benchmark_module", "fake"))
    monkeypatch.setattr(runner, "load_benchmark", lambda name: fake if name == "fake" else None)
    out = tmp_path / "results.json"
    assert runner.main(["--suite", "cpu", "--repeats", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no_such_benchmark_module: not available" in printed and "machine:" in printed
    saved = json.loads(out.read_text())
    assert saved["status"] == {"no_such_benchmark_module": "not available", "fake": "ok"}
    assert saved["rows"][0]["values"] == [1.0, 1.0]
    monkeypatch.undo()
    assert runner.load_benchmark("no_such_benchmark_module") is None


def test_smollm2_real_reads_each_stage_of_the_launcher_log_and_makes_rows(tmp_path):
    from benchmarks import run as runner
    from benchmarks import smollm2_real

    assert runner.SUITES["pretrained"] == ("smollm2_real",) and "smollm2_real" not in runner.SUITES["cpu"]
    log = tmp_path / "log.txt"
    log.write_text(
        "== training r -> /w/stage1 (1 processes, CPU, ZeRO-2)\n{'loss': '5.9', 'grad_norm': '1'}\n{'loss': '4.1'}\n"
        "{'train_runtime': '12.0', 'train_loss': '5.0'}\n== done in 20 s: checkpoint in /w/stage1\n"
        "== training r -> /w/stage2 (1 processes, CPU, ZeRO-2)\n{'loss': '3.0'}\n{'train_runtime': '9.0'}\n"
        "== done in 15 s: checkpoint in /w/stage2\n"
    )
    stage1 = smollm2_real._training_log(str(log), "/w/stage1")
    assert stage1 == {"steps": 2, "seconds_per_step": 6.0, "first_loss": 5.9, "last_loss": 4.1, "train_runtime": 12.0}
    assert smollm2_real._training_log(str(log), "/w/stage2")["steps"] == 1
    scores = {"conditions": {c: {"overall": 50.0} for c in ("real", "blank", "shuffled")},
              "majority_baseline": {"overall": 40.0}}
    outcome = {"config": {"pretrain_steps": 2}, "training": {"stage1": stage1, "stage2": stage1},
               "peak_rss_mib": {"stage1": 1000.0, "stage2": 2000.0}, "scores": scores}
    check_rows(smollm2_real.rows_for(outcome), "smollm2_real")
