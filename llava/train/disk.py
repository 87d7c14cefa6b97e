"""A full disk while saving, said in one line: the folder, about how many bytes the save needs, how many are free.

torch reports a full disk as `basic_ios::clear: iostream error` or `PytorchStreamWriter failed writing
file`, safetensors as `IoError(... StorageFull ...)`; none says the disk is full. `explain_full_disk`
turns those (and any `OSError` with ENOSPC / EDQUOT) into `DiskFull`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

# Messages that mean "no space" whatever the free space now reads.
_NO_SPACE = ("No space left", "StorageFull", "Disk quota exceeded", "code: 28,")
# Messages of a failed write that a full disk causes, among other things: counted as a full disk when
# the free space is below what the save needs.
_WRITE_FAILED = ("iostream error", "file write failed", "failed writing file", "unexpected pos")


class DiskFull(OSError):
    """A save that ran out of disk space."""


def _human(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"  # pragma: no cover


def free_bytes(folder: str) -> int:
    """Free bytes on the disk holding `folder` (or its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_full_disk(exc: BaseException, folder: str, needed: int) -> bool:
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if any(s in text for s in _NO_SPACE):
            return True
        if any(s in text for s in _WRITE_FAILED) and free_bytes(folder) < needed:
            return True
    return False


def save_size(model, trainable_only: bool = False, optimizer: bool = False) -> int:
    """About how many bytes a save of `model` writes: its weights (or only the trained ones), plus Adam's
    two fp32 moments per trained weight for a checkpoint. ZeRO-3-partitioned weights count whole."""
    total = 0
    for param in model.parameters():
        count = getattr(param, "ds_numel", None) or param.numel()
        if param.requires_grad or not trainable_only:
            total += count * param.element_size()
        if optimizer and param.requires_grad:
            total += count * 8
    return total


@contextlib.contextmanager
def explain_full_disk(folder: str, needed: int, what: str, cleanup: str | None = None):
    """Inside the block, a write that fails for want of space raises `DiskFull` naming `folder`; `cleanup`
    (the half-written staging folder) is deleted first, so the space it took is free again."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, DiskFull) or not is_full_disk(exc, folder, needed):
            raise
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
            with contextlib.suppress(OSError):  # the staging area too, once nothing else is staged there
                os.rmdir(os.path.dirname(cleanup))
        raise DiskFull(
            f"the disk is full: writing {what} into {folder} needs about {_human(needed)}, {_human(free_bytes(folder))} "
            "are free; free some space (or point --output_dir at a larger disk) and run the same command again, "
            "it continues from the newest complete checkpoint"
        ) from None
