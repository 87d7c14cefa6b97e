"""Two machines, each started by its own launcher (as srun or a Kubernetes job starts them), on this one machine:
node ranks 0 and 1 over 127.0.0.1, 2 processes each, train like one machine with 4 processes; checkpoints are
written once and both nodes resume from them (slow: 2 min 47 s on 2 cores, 6 min 16 s while other jobs shared
them, 2026-12-07). The HOSTFILE route (one launcher starting every machine over ssh) trains the same, with
ssh and pdsh stood in for by scripts that run their command on this machine."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest

from helpers import launcher_env
from llava.train import checkpoint

from test_train_checkpoints import assert_same_losses
from test_train_run import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "scripts", "pretrain.sh")
# A constant rate, so that a run stopped at step 2 and continued to step 3 follows the 3-step schedule.
FLAGS = "--lr_scheduler_type constant --model_max_length 256"


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_nodes(env: dict, steps: int) -> list[str]:
    """Both launchers at once, as a scheduler starts them; their logs."""
    port = free_port()
    nodes = [subprocess.Popen(["bash", PRETRAIN], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port, "MAX_STEPS": str(steps)})
             for rank in (0, 1)]
    logs = [node.communicate(timeout=400)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-4000:]
    return logs


COMMON = dict(SAVE_STEPS="2", OMP_NUM_THREADS="1", EXTRA_ARGS=FLAGS)


@pytest.fixture(scope="module")
def four_processes(tiny_llm, tiny_clip, demo_data, tmp_path_factory) -> dict:
    """Per-step losses of 3 steps on one machine with 4 processes: what the multi-machine runs must equal."""
    root = tmp_path_factory.mktemp("one-machine")
    env = launcher_env(tiny_llm, tiny_clip, demo_data, root, OUTPUT_DIR=str(root / "out"), NUM_GPUS="4",
                       MAX_STEPS="3", **COMMON)
    proc = subprocess.run(["bash", PRETRAIN], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = losses(root / "out")
    assert sorted(expected) == [1, 2, 3]
    return expected


@pytest.mark.slow
def test_two_nodes_of_two_processes_train_like_four_processes_and_resume(tiny_llm, tiny_clip, demo_data, tmp_path,
                                                                         four_processes):
    expected = four_processes
    out = tmp_path / "two-nodes"
    env = launcher_env(tiny_llm, tiny_clip, demo_data, tmp_path, OUTPUT_DIR=str(out), **COMMON)
    logs = run_nodes(env, steps=2)
    assert "node 0 of 2, 2 processes each" in logs[0] and "node 1 of 2, 2 processes each" in logs[1]
    assert sorted(losses(out)) == [1, 2]
    # Written once: one checkpoint-2 (renamed into place by global rank 0 alone), holding one optimizer shard
    # per global rank 0-3 (node 1's processes are ranks 2 and 3, not a second 0 and 1).
    assert [step for step, _ in checkpoint.list_checkpoints(str(out))] == [2]
    assert sorted(os.listdir(out / "checkpoint-2" / "global_step2")) == [
        "mp_rank_00_model_states.pt", *(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4))]
    assert not (out / checkpoint.PARTIAL).exists()
    assert sum(log.count("resuming from") for log in logs) == 0

    logs = run_nodes(env, steps=3)  # both nodes again, asked for one more step
    assert f"resuming from {out / 'checkpoint-2'}" in logs[0]  # said by global rank 0
    assert_same_losses(losses(out), expected)  # steps 1-2 from the checkpoint, step 3 trained by all 4 ranks
    assert (out / "mm_projector.bin").exists()


# `ssh [-o opt] [-p port] HOST CMD...`: CMD run here. DeepSpeed's runner asks the first host for `hostname -I`
# (its address becomes the master address): every stand-in machine is this one, 127.0.0.1.
FAKE_SSH = """#!{python}
import subprocess, sys
args = sys.argv[1:]
while args and args[0] in ("-o", "-p"):
    args = args[2:]
command = " ".join(args[1:])
if command == "hostname -I":
    print("127.0.0.1")
    sys.exit(0)
sys.exit(subprocess.call(["bash", "-c", command]))
"""
# `pdsh -S -f N -w host1,host2 CMD...`: CMD run once per host, at once, `%n` replaced by the host's index
# (as pdsh does); the largest exit status (-S).
FAKE_PDSH = """#!{python}
import subprocess, sys
args = sys.argv[1:]
hosts = args[args.index("-w") + 1].split(",")
command = " ".join(args[args.index("-w") + 2:])
nodes = [subprocess.Popen(["bash", "-c", command.replace("%n", str(i))]) for i in range(len(hosts))]
sys.exit(max(node.wait() for node in nodes))
"""


def stand_in_commands(folder) -> str:
    folder.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("pdsh", FAKE_PDSH)):
        path = folder / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(folder)


@pytest.mark.slow
def test_a_hostfile_of_two_machines_trains_like_one_machine(tiny_llm, tiny_clip, demo_data, tmp_path, four_processes):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    out = tmp_path / "hostfile-run"
    env = launcher_env(tiny_llm, tiny_clip, demo_data, tmp_path, OUTPUT_DIR=str(out), HOSTFILE=str(hostfile),
                       MASTER_PORT=free_port(), MAX_STEPS="2", **COMMON)
    env["PATH"] = stand_in_commands(tmp_path / "bin") + os.pathsep + env["PATH"]
    proc = subprocess.run(["bash", PRETRAIN], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Running on the following workers: node-a,node-b" in log  # DeepSpeed's multi-machine path, not local
    # A constant rate: the first 2 steps of the 3-step run are a 2-step run.
    assert_same_losses(losses(out), {step: loss for step, loss in four_processes.items() if step <= 2})
    assert [step for step, _ in checkpoint.list_checkpoints(str(out))] == [2]
    assert sorted(os.listdir(out / "checkpoint-2" / "global_step2")) == [
        "mp_rank_00_model_states.pt", *(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4))]
    assert (out / "mm_projector.bin").exists()
