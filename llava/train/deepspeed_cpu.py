"""DeepSpeed on a CPU-only machine: no silent minutes of C++ compilation before the first step.

DeepSpeed's CPU communication backend JIT-compiles `deepspeed_shm_comm` (a shared-memory
all-reduce, 30 s to 3 min of g++ with no output) the first time `init_distributed` runs on a
machine. Only DeepSpeed inference's tensor parallelism (`inference_all_reduce`) calls it; training's
gradient reductions go through torch.distributed (gloo) either way. So it is marked unavailable
before DeepSpeed's comm layer starts, and never built.
"""

from __future__ import annotations

SHM_COMM_OP = "deepspeed_shm_comm"  # ShareMemCommBuilder.NAME


def skip_shm_comm_build() -> None:
    import deepspeed.ops

    # The probed op table, cached in the module so DeepSpeed reads this edit (deepspeed/ops/__init__.py).
    compatible = deepspeed.ops.__compatible_ops__
    if SHM_COMM_OP in compatible:
        compatible[SHM_COMM_OP] = False
