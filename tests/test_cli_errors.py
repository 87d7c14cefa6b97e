"""One error convention for every entry point (llava.errors): a clear error is one line and exit status 2,
a bug keeps its traceback, LLAVA_DEBUG=1 shows every traceback, and under 2 processes the line appears once."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from helpers import cached_checkpoint, make_llava_checkpoint, write_questions
from llava import errors
from llava.records import InvalidRecord

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def caught(call):
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return exc
    pytest.fail("nothing was raised")


def exits(capsys, main, *args, **kwargs):
    """(exit status, stderr) of `errors.run(main, *args)`."""
    with pytest.raises(SystemExit) as stop:
        errors.run(main, *args, **kwargs)
    return stop.value.code, capsys.readouterr().err


def test_what_counts_as_a_clear_error(tmp_path):
    from llava.conversation import get_conv_template
    from llava.eval.model_vqa import read_questions

    assert errors.is_clear(caught(lambda: get_conv_template("nope")))  # ValueError raised by our check
    assert errors.is_clear(caught(lambda: read_questions(str(tmp_path / "none.jsonl"))))  # our open() of a path
    assert errors.is_clear(InvalidRecord("r1", "bad"))  # our own type, raised anywhere
    assert errors.is_clear(SystemExit("model_vqa: bad input")) and not errors.is_clear(SystemExit(2))
    assert not errors.is_clear(caught(lambda: int("x")))  # a failed operation in code outside llava
    assert not errors.is_clear(caught(lambda: json.loads("{")))  # a ValueError from inside a library
    bug_in_llava = compile("int('x')", os.path.join(os.path.dirname(errors.__file__), "no_such_module.py"), "exec")
    assert not errors.is_clear(caught(lambda: exec(bug_in_llava)))  # not a raise statement: a bug
    import torch

    assert not errors.is_clear(caught(lambda: torch.zeros(2).view(3)))
    worker = RuntimeError("Caught InvalidRecord in DataLoader worker process 0.\nOriginal Traceback (most recent "
                          "call last):\n  File \"x.py\", line 1, in f\nllava.records.InvalidRecord: "
                          "record 'r9': image a.png cannot be read")
    assert errors.is_clear(worker) and errors.message(worker) == "record 'r9': image a.png cannot be read"
    assert not errors.is_clear(RuntimeError("Caught KeyError in DataLoader worker process 0.\nKeyError: 'x'"))


def test_a_file_the_system_refuses_is_one_line_and_data_tools_get_the_status(capsys, tmp_path):
    import errno

    def disk_full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out.json")

    code, err = exits(capsys, disk_full, program="prog")
    assert code == 2 and err == f"prog: error: out.json: {os.strerror(errno.ENOSPC)}\n"
    assert not errors.is_clear(OSError("no file named"))  # not the system's report about a file
    from llava.data import validate

    assert validate.main(["--data_path", str(tmp_path / "nope.json")]) == 2  # returned, not exited
    assert capsys.readouterr().err.strip().endswith("error: " + f"{tmp_path / 'nope.json'}: file not found")


def test_run_prints_one_line_and_exits_2_and_bugs_keep_their_traceback(capsys, monkeypatch):
    from llava.conversation import get_conv_template

    code, err = exits(capsys, get_conv_template, "nope", program="prog")
    assert code == 2 and err == (f"prog: error: unknown conversation template 'nope'; choose one of: "
                                 f"{err.split('choose one of: ')[1]}") and err.count("\n") == 1
    code, err = exits(capsys, lambda: (_ for _ in ()).throw(SystemExit("prog: its own words")), program="prog")
    assert code == 2 and err == "prog: its own words\n"
    assert exits(capsys, lambda: 3)[0] == 3 and exits(capsys, lambda: {"a": 1})[0] == 0
    with pytest.raises(ValueError, match="invalid literal"):
        errors.run(lambda: int("x"))
    monkeypatch.setenv("LLAVA_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown conversation template"):
        errors.run(get_conv_template, "nope")


def test_other_ranks_stay_quiet_about_setup_errors_and_report_their_own(capsys, monkeypatch):
    from llava.conversation import get_conv_template

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(errors, "_same_on_every_rank", True)
    assert exits(capsys, get_conv_template, "nope", program="prog") == (2, "")
    assert exits(capsys, argparse.ArgumentParser().parse_args, ["--bad"]) == (2, "")  # rank 0 prints the usage
    errors.ranks_may_differ()
    code, err = exits(capsys, lambda: (_ for _ in ()).throw(InvalidRecord("r3", "corrupt")), program="prog")
    assert code == 2 and err == "[rank 1] prog: error: record 'r3': corrupt\n"


# -- each entry point --------------------------------------------------------------------------------
def test_entry_points_follow_the_convention(capsys, tmp_path, tiny_llm, tiny_clip, tmp_path_factory, demo_data):
    from llava.data import demo
    from llava.eval import eval_okvqa, model_vqa
    from llava.export import hf
    from llava.serve import cli
    from llava.train import feature_cache
    from llava.train.train import train

    missing = str(tmp_path / "missing.json")
    checkpoint = cached_checkpoint(tmp_path_factory, tiny_llm, tiny_clip, "phi")
    resblock = make_llava_checkpoint(str(tmp_path / "resblock"), tiny_llm("phi"), tiny_clip, projector="simple_resblock")
    questions = write_questions(str(tmp_path / "q.jsonl"), [{"question_id": 1, "image": "../x.png", "text": "?"}])
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([{"id": "r", "image": "/etc/passwd", "conversations": []}]))
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import fuse_vision_towers
    import merge_lora_weights

    cases = {
        "llava.train": (train, ["--model_name_or_path", tiny_llm("phi"), "--vision_tower", tiny_clip, "--data_path",
                                missing, "--output_dir", str(tmp_path / "o"), "--version", "nope"],
                        "--version: unknown conversation template 'nope'"),
        "model_vqa": (model_vqa.main, ["--model-path", checkpoint, "--question-file", questions, "--answers-file",
                                       str(tmp_path / "a.jsonl")], "question 1: image path '../x.png' climbs out"),
        "eval_okvqa": (eval_okvqa.main, ["--annotation-file", missing, "--question-file", missing,
                                         "--result-file", missing], "missing.json"),
        "cli": (cli.main, ["--model-path", checkpoint, "--image-file", str(tmp_path / "nope.png")],
                "--image-file: image file not found"),
        "export": (hf.main, ["--model-path", resblock, "--out", str(tmp_path / "hf")], "cannot export"),
        "export (missing --model-path)": (hf.main, ["--model-path", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")],
                                          f"--model-path {tmp_path / 'nope'}: no such folder"),
        "merge (missing --model-path)": (merge_lora_weights.main, ["--model-path", str(tmp_path / "nope"),
                                                                   "--save-model-path", str(tmp_path / "m")],
                                         f"--model-path {tmp_path / 'nope'}: no such folder"),
        "merge_lora_weights": (merge_lora_weights.main, ["--model-path", checkpoint, "--model-base", tiny_llm("phi"),
                                                         "--save-model-path", str(tmp_path / "m")], "not a LoRA checkpoint"),
        "fuse_vision_towers": (fuse_vision_towers.main, ["--towers", tiny_clip, "--out", str(tmp_path / "f")],
                               "--towers: a fused tower needs at least two towers, got 1"),
        "fuse_vision_towers (missing tower)": (fuse_vision_towers.main, ["--towers", tiny_clip, str(tmp_path / "nope"),
                                                                         "--out", str(tmp_path / "f")],
                                               f"--towers {tmp_path / 'nope'}: no such folder"),
        "feature_cache": (feature_cache.main, ["--vision_tower", tiny_clip, "--data_path", str(outside), "--out",
                                               str(tmp_path / "c")], "image path '/etc/passwd' is absolute"),
        "demo": (demo.main, ["--out", str(tmp_path / "nodata"), "--baseline"], "--baseline: "),
    }
    for name, (main, argv, expected) in cases.items():
        code, err = exits(capsys, main, argv, program=name)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert lines and expected in lines[-1] and "Traceback" not in err, (name, err)


@pytest.mark.slow
def test_a_real_command_prints_one_line_or_with_llava_debug_the_traceback(tiny_llm, tiny_clip, demo_data, tmp_path):
    command = [sys.executable, "-m", "llava.train.train", "--model_name_or_path", str(tmp_path / "no-llm"),
               "--vision_tower", tiny_clip, "--data_path", demo_data["finetune"], "--output_dir", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"llava.train: error: --model_name_or_path {tmp_path / 'no-llm'}: no such folder (looked for "
        f"{tmp_path / 'no-llm'}); check the path")
    debug = subprocess.run(command, env={**env, "LLAVA_DEBUG": "1"}, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "resolve_pretrained" in debug.stderr


@pytest.mark.slow
def test_two_processes_print_a_setup_error_once_and_both_exit_non_zero(tiny_llm, tiny_clip, demo_data, tmp_path):
    """Two ranks started as torchrun starts them (RANK, WORLD_SIZE, MASTER_*), each one's exit status seen."""
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True).stdout.strip()
    command = [sys.executable, "-m", "llava.train.train", "--model_name_or_path", tiny_llm("phi"),
               "--vision_tower", tiny_clip, "--data_path", demo_data["finetune"], "--output_dir", str(tmp_path / "o"),
               "--version", "vicuna_v9"]
    ranks = [subprocess.Popen(command, env={**os.environ, "PYTHONPATH": REPO, "RANK": str(r), "LOCAL_RANK": str(r),
                                            "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                            "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [rank.communicate(timeout=180) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2]
    line = "llava.train: error: --version: unknown conversation template 'vicuna_v9'"
    assert results[0][1].count(line) == 1 and "Traceback" not in results[0][1]
    assert "vicuna_v9" not in results[1][1] and "Traceback" not in results[1][1]  # rank 1 stays quiet


# A training step as two ranks meet it when a bad record reaches one of them: rank 1 fails with a clear
# error, rank 0 is waiting in a collective whose connection to rank 1 then closes.
_TWO_RANKS = """
import sys, torch, torch.distributed as dist
from llava import errors
from llava.records import InvalidRecord

def main():
    dist.init_process_group("gloo")
    errors.ranks_may_differ()
    if dist.get_rank() == 1:
        raise InvalidRecord("r7", "image x.png cannot be read", "corrupt image")
    for _ in range(100):
        dist.all_reduce(torch.ones(4))
        __import__("time").sleep(0.05)

errors.run(main, program="llava.train")
"""


@pytest.mark.slow
def test_a_rank_whose_peer_failed_prints_one_line_naming_that_rank(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True).stdout.strip()
    ranks = [subprocess.Popen([sys.executable, str(script)],
                              env={**os.environ, "PYTHONPATH": REPO, "RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    (_, err0), (_, err1) = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2], (err0, err1)
    assert err1.strip().splitlines()[-1] == "[rank 1] llava.train: error: record 'r7': image x.png cannot be read"
    assert "Traceback" not in err0, err0
    assert err0.strip().splitlines() == ["[rank 0] llava.train: stopped because rank 1 failed; see rank 1's error"]


def test_a_broken_collective_before_ranks_may_differ_keeps_its_traceback(monkeypatch):
    """Until the steps start every rank does the same work: a broken connection then is not a peer's data error."""
    monkeypatch.setattr(errors, "_same_on_every_rank", True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    broken = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:36580.")
    assert not errors.peer_failure(broken)
    errors.ranks_may_differ()
    assert errors.peer_failure(broken)
    assert not errors.peer_failure(RuntimeError("CUDA out of memory"))
