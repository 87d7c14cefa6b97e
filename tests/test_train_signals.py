"""A launcher stopped with SIGTERM (a container stop, a preemption) stops every process at a step boundary with a
checkpoint, and the same command resumes from it (2 DeepSpeed processes on the CPU; slow: 3 min 44 s on the 2
shared cores, 2026-12-07)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from helpers import launcher_env
from llava.train import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_process_with_a_checkpoint_and_the_same_command_resumes(
        tiny_llm, tiny_clip, demo_data, tmp_path):
    out = tmp_path / "run"
    env = launcher_env(tiny_llm, tiny_clip, demo_data, tmp_path, OUTPUT_DIR=str(out), MAX_STEPS="12",
                       SAVE_STEPS="100", OMP_NUM_THREADS="1")
    command = ["bash", os.path.join(REPO, "scripts", "pretrain.sh")]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # the first step's log line: training is under way in both processes
        lines.append(line)
        if "'loss'" in line:
            break
    run = psutil.Process(proc.pid).children(recursive=True)
    assert sum("train.py" in " ".join(p.cmdline()) for p in run) >= 2  # the runner, launch.py and 2 ranks
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    log = "".join(lines)
    assert time.monotonic() - start < 30, log[-3000:]
    assert not [p for p in run if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "processes left behind"
    assert "received SIGTERM: stopping after this step" in log and "== stopped by SIGTERM" in log
    saved = checkpoint.list_checkpoints(str(out))
    assert len(saved) == 1 and checkpoint.incomplete_reason(saved[0][1]) is None, log[-3000:]
    step = saved[0][0]
    assert 1 <= step < 12 and f"stopped by SIGTERM at step {step}" in log
    assert not (out / "mm_projector.bin").exists()  # not finished: no final model

    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming from {saved[0][1]}" in done.stdout + done.stderr
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 13))
    assert (out / "mm_projector.bin").exists()
