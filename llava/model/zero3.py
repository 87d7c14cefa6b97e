"""DeepSpeed ZeRO-3 helpers that both the model (loading, copying the tower) and training (saving) need.

Under ZeRO-3 every parameter is partitioned across ranks (it carries a `ds_id`, and `ds_numel` is its
full size); reading one whole needs a gather, and building a module from pretrained weights must
happen outside DeepSpeed's partitioning context.
"""

from __future__ import annotations

import contextlib


def is_zero3(param) -> bool:
    return hasattr(param, "ds_id")


def full_numel(param) -> int:
    """The parameter's full size, also when ZeRO-3 holds only a partition of it on this rank."""
    return getattr(param, "ds_numel", None) or param.numel()


@contextlib.contextmanager
def gathered(params, modifier_rank=None):
    """Full copies of ZeRO-3-partitioned `params` inside the block (a no-op otherwise)."""
    params = [p for p in params if is_zero3(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


@contextlib.contextmanager
def outside_zero3():
    """Build (or read) modules as ordinary modules even under ZeRO-3.

    A ZeRO-3-aware `from_pretrained` would hand back partitioned weights that cannot be copied
    into the tower, and called on one rank alone it waits for the others; DeepSpeed partitions
    these modules when the engine starts.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    config = hf_deepspeed._hf_deepspeed_config_weak_ref() if hf_deepspeed._hf_deepspeed_config_weak_ref else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
