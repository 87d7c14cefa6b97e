"""Re-running a command does what was asked (issue 25): a finished run stays finished, a resume on other inputs
is refused, a full disk is said in one line and never leaves a model that looks complete (single process, ≈1 min).
"""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
import torch
import transformers.modeling_utils

from llava.train import checkpoint, disk, run_record
from llava.train.disk import DiskFull
from llava.train.train import train

from test_train_run import base_args, log_history  # noqa: F401  (fixture shared with the run tests)


def finetune(base_args, data, out, steps, *extra):  # noqa: F811
    return [*base_args, "--data_path", str(data), "--learning_rate", "2e-3", "--output_dir", str(out),
            "--max_steps", str(steps), "--save_steps", "2", "--save_total_limit", "2", *extra]


def snapshot(folder):
    """Every file under `folder` with its size and modification time, to the nanosecond."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            stat = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_rerunning_a_finished_run_changes_nothing_and_more_steps_continue_it(base_args, demo_data, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "run"
    args = finetune(base_args, demo_data["finetune"], out, 3)  # 3 of 16 steps: ends mid-epoch
    train(args)
    record = json.loads((out / run_record.RECORD).read_text())
    assert record["finished"]["global_step"] == 3 and record["inputs"]["data_path"]["bytes"] > 0
    before = snapshot(out)
    assert {"checkpoint-2/model.safetensors", "checkpoint-3/model.safetensors", "model.safetensors"} <= set(before)

    for _ in range(2):  # each re-run used to train one more step and rotate the asked-for checkpoint away
        with caplog.at_level(logging.INFO, logger="llava.train"):
            assert train(args) is None
        assert f"{out} already holds the final model of this run (3 steps" in caplog.text
        assert snapshot(out) == before

    train(finetune(base_args, demo_data["finetune"], out, 4))  # asked for more: it continues
    assert [e["step"] for e in log_history(out) if "loss" in e] == [1, 2, 3, 4]
    assert json.loads((out / run_record.RECORD).read_text())["finished"]["global_step"] == 4


def test_resuming_on_other_data_is_refused_naming_it_unless_allowed(base_args, demo_data, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "run"
    train(finetune(base_args, demo_data["finetune"], out, 2))
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps(json.loads(open(demo_data["finetune"]).read())[:8]))
    more_steps = finetune(base_args, fewer, out, 4)
    with pytest.raises(ValueError, match=rf"--output_dir {out} holds a run started with other inputs \(data_path: "
                                         rf".*finetune\.json \([\d,]+ bytes, hash \w+\) -> .*fewer\.json \([\d,]+ bytes"
                                         r".*--allow_changed_inputs True to continue"):
        train(more_steps)
    assert [e["step"] for e in log_history(out) if "loss" in e] == [1, 2]  # nothing trained
    # The same content under another name is the same data.
    moved = tmp_path / "moved.json"
    moved.write_bytes(open(demo_data["finetune"], "rb").read())
    assert run_record.changes(json.loads((out / run_record.RECORD).read_text()),
                              {"inputs": {"data_path": run_record.file_fingerprint(str(moved))}}) == []

    with caplog.at_level(logging.INFO, logger="llava.train"):
        train([*more_steps, "--allow_changed_inputs", "True"])
    assert "continuing the run in" in caplog.text and "resuming from" in caplog.text
    assert [e["step"] for e in log_history(out) if "loss" in e] == [1, 2, 3, 4]
    assert json.loads((out / run_record.RECORD).read_text())["inputs"]["data_path"]["path"] == str(fewer)


def no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_at_the_final_save_leaves_no_model_and_the_rerun_writes_only_the_model(
        base_args, demo_data, tmp_path, monkeypatch, caplog):  # noqa: F811
    out = tmp_path / "run"
    args = finetune(base_args, demo_data["finetune"], out, 2)
    save = transformers.modeling_utils.safe_save_file

    def full_for_the_final_model(tensors, filename, *a, **k):
        if "final-model" in filename:
            raise no_space(filename)
        return save(tensors, filename, *a, **k)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_for_the_final_model)
    with pytest.raises(DiskFull) as caught:
        train(args)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the disk is full: writing the final model into {out} needs about ")
    assert "are free" in message and "run the same command again" in message
    # checkpoint-2 is complete; nothing in the output folder looks like a model (no config.json without weights).
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert not (out / checkpoint.PARTIAL).exists()
    assert checkpoint.incomplete_reason(str(out / "checkpoint-2")) is None

    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="llava.train"):
        assert train(args) is None
    assert "checkpoint-2 reached --max_steps 2; only the final model was missing" in caplog.text
    assert [e["step"] for e in log_history(out) if "loss" in e] == [1, 2]  # no third step
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-2"]
    assert (out / "model.safetensors").read_bytes() == (out / "checkpoint-2" / "model.safetensors").read_bytes()
    assert (out / "config.json").exists() and not (out / "optimizer.pt").exists()


def test_a_full_disk_during_a_checkpoint_says_so_in_one_line_and_leaves_no_checkpoint(
        base_args, demo_data, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "run"
    save = torch.save

    def iostream_error(obj, f, *a, **k):
        # What torch raises when the disk fills under its writer; it never says why.
        if isinstance(f, str) and "checkpoint-2" in f and f.endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs 4248: "
                               "basic_ios::clear: iostream error")
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", iostream_error)
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 512)
    with pytest.raises(DiskFull, match=rf"^the disk is full: writing checkpoint-2 into {out} needs about [\d.]+ [kM]B, "
                                       r"512 bytes are free; free some space"):
        train(finetune(base_args, demo_data["finetune"], out, 2))
    assert not (out / "checkpoint-2").exists() and not (out / checkpoint.PARTIAL).exists()
    assert not (out / "config.json").exists()
    # The same write error with room to spare is not a full disk: the original error stays.
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 10**15)
    with pytest.raises(RuntimeError, match="iostream error"):
        train(finetune(base_args, demo_data["finetune"], tmp_path / "other", 2))
