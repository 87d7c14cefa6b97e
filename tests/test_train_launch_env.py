"""How the launchers find the machines of a run: SLURM's srun variables, or NNODES / NODE_RANK / MASTER_ADDR /
MASTER_PORT set by hand; what is missing is said before anything starts (sources scripts/common.sh, ≈1 s each)."""

from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE")


def launch_settings(tmp_path, **env):
    """(exit status, 'NNODES NODE_RANK MASTER_ADDR MASTER_PORT' after sourcing common.sh, stderr)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    scontrol = fake / "scontrol"  # SLURM's own tool expands a node list such as gpu-[07-08]
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] && printf "gpu-07\\ngpu-08\\n"\n')
    scontrol.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in NAMES and not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", "-c", f"source {REPO}/scripts/common.sh && echo $NNODES $NODE_RANK ${{MASTER_ADDR:-}} $MASTER_PORT"],
        env={**base, "PATH": f"{fake}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", **env},
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def test_inside_srun_the_run_takes_slurms_nodes_rank_first_host_and_a_port_from_the_job(tmp_path):
    slurm = dict(SLURM_STEP_NUM_NODES="2", SLURM_NODEID="1", SLURM_STEP_NODELIST="gpu-[07-08]", SLURM_JOB_ID="123456")
    assert launch_settings(tmp_path, **slurm)[:2] == (0, f"2 1 gpu-07 {20000 + 123456 % 20000}")
    # What the user sets wins.
    assert launch_settings(tmp_path, **slurm, MASTER_PORT="29500")[1] == "2 1 gpu-07 29500"
    status, out, _ = launch_settings(tmp_path, **slurm, NNODES="1")
    assert status == 0 and out.split()[:2] == ["1", "0"]
    # A one-node srun step is one machine: nothing to rendezvous.
    status, out, _ = launch_settings(tmp_path, SLURM_STEP_NUM_NODES="1", SLURM_NODEID="0", SLURM_JOB_ID="5")
    assert status == 0 and out.split()[:2] == ["1", "0"]


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_several_machines_by_hand_need_node_0s_address_and_port(tmp_path, missing):
    given = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert launch_settings(tmp_path, **given)[:2] == (0, "2 1 10.0.0.1 29500")
    del given[missing]
    status, _, err = launch_settings(tmp_path, **given)
    assert status == 2 and err == f"NNODES=2: set {missing} (node 0's address and a free port on it, the same on every node)"


def test_a_hostfile_and_nnodes_together_are_refused(tmp_path):
    status, _, err = launch_settings(tmp_path, NNODES="2", MASTER_ADDR="10.0.0.1", MASTER_PORT="29500",
                                     HOSTFILE="hostfile")
    assert status == 2 and err == "HOSTFILE and NNODES=2 are two ways to run on several machines; set one"
