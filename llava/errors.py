"""One error convention for every command-line entry point (training, evaluation, serving, export, data tools).

A *clear* error, a problem with the user's input that our own checks explain, prints one line,
`<program>: error: <message>`, and exits with status 2, as argparse does for a bad flag. Anything
else is taken for a bug and keeps Python's traceback (exit status 1). With `LLAVA_DEBUG=1` in the
environment clear errors keep their traceback too.

Clear errors are:
- `SystemExit` with a message (an entry point's own `raise SystemExit("...")`);
- exceptions of a type defined in the `llava` package (`InvalidRecord`, `ImageTooLarge`, `DataError`, ...);
- `ValueError` raised by a `raise` statement in llava's own code (our checks), and the `OSError`s that
  name a path (`FileNotFoundError`, `NotADirectoryError`, `IsADirectoryError`, `PermissionError`)
  raised by llava's own code;
- an `OSError` from the system about a file it names (disk full, permission denied, ...), wherever
  raised: printed as `<file>: <reason>`.
The same built-in types raised inside torch, transformers or any other library, or by a failed
operation in our code (`int("x")`, a bad unpacking), keep their traceback: they point at a bug or
at a check we are missing.

Under torchrun / deepspeed every rank runs the entry point. An error raised while every rank does
the same work (argument, path and data checks) is printed by rank 0 alone; once an entry point calls `ranks_may_differ()` (training, when its steps start) an
error only some ranks may meet (a bad record loaded mid-training) is printed by each rank that
meets it, prefixed with its rank. Every rank exits non-zero. The rank that failed leaves its number in the
process group's store; a peer whose next collective then breaks (the connection to the failed rank
closes) prints one line naming that rank instead of the communication library's traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import linecache
import os
import re
import sys

EXIT_CODE = 2
DEBUG_ENV = "LLAVA_DEBUG"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_same_on_every_rank = True
# torch re-raises a DataLoader worker's exception as "Caught <Type> in DataLoader worker process N."
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+")
# How gloo and NCCL word a collective broken by a peer that exited.
_PEER_GONE = re.compile(
    r"Connection closed by peer|Connection reset by peer|remote worker crash|remote process exit|Broken pipe", re.I
)
_FAILED_RANK_KEY = "llava/failed_rank"


class DataError(ValueError):
    """A problem with the user's data: the message says which file, which record, and what to do."""


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _innermost_frame(exc: BaseException):
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _raised_by_llava(exc: BaseException, statement: bool) -> bool:
    tb = _innermost_frame(exc)
    if tb is None:
        return False
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_PACKAGE_DIR):
        return False
    return not statement or linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def is_clear(exc: BaseException) -> bool:
    """Whether `exc` is a user-facing error whose message says it all (see the module docstring)."""
    if isinstance(exc, SystemExit):
        return isinstance(exc.code, str)
    if type(exc).__module__.split(".")[0] == "llava":
        return True
    if isinstance(exc, OSError) and _system_file_error(exc):
        return True
    if isinstance(exc, _PATH_ERRORS):
        return _raised_by_llava(exc, statement=False)
    if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError):
        return _raised_by_llava(exc, statement=True)
    worker = _WORKER_ERROR.match(str(exc)) if isinstance(exc, RuntimeError) else None
    return bool(worker) and _worker_message(str(exc), worker.group(1)) is not None


def _system_file_error(exc: OSError) -> bool:
    """The system's own report about a named file (`[Errno 28] No space left on device: 'out.json'`)."""
    return bool(exc.errno and exc.filename and exc.strerror) and exc.args[1:2] == (exc.strerror,)


def _worker_message(text: str, type_name: str) -> str | None:
    """The message of a clear error raised in a DataLoader worker: the last line of its traceback."""
    for line in reversed(text.strip().splitlines()):
        name, sep, message = line.partition(": ")
        if sep and name.rsplit(".", 1)[-1] == type_name and name.split(".")[0] == "llava":
            return message
    return None


def message(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return str(exc.code)
    worker = _WORKER_ERROR.match(str(exc)) if isinstance(exc, RuntimeError) else None
    if worker:
        return _worker_message(str(exc), worker.group(1)) or str(exc)
    if isinstance(exc, OSError) and _system_file_error(exc):
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def ranks_may_differ() -> None:
    """From here on an error may reach some ranks only (a bad record mid-training): each reports its own.

    Until then (arguments, paths, data checks) errors are the same on every rank and rank 0 alone reports them.
    """
    global _same_on_every_rank
    _same_on_every_rank = False


@contextlib.contextmanager
def exit_on_clear_error(program: str):
    """Inside a `main()` that tests call directly: a clear error becomes `SystemExit("<program>: <message>")`."""
    try:
        yield
    except Exception as exc:
        if debug() or not is_clear(exc):
            raise
        raise SystemExit(f"{program}: {message(exc)}") from None


def report(exc: BaseException, program: str) -> None:
    """Print a clear error's one line (on the ranks that should)."""
    # An entry point's own SystemExit message is printed as it worded it.
    line = message(exc) if isinstance(exc, SystemExit) else f"{program}: error: {message(exc)}"
    if not _same_on_every_rank:
        _tell_peers()
    if rank() != 0:
        if _same_on_every_rank:
            return
        line = f"[rank {rank()}] {line}"
    _print(line)


def _print(line: str) -> None:
    _close_progress_bars()
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)


def _process_group_store():
    """The default process group's key-value store, when this process is in one (never imports torch)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError):
        return None


def _tell_peers() -> None:
    """Leave this rank's number where the other ranks look when their collectives break."""
    store = _process_group_store()
    if store is None:
        return
    with contextlib.suppress(Exception):  # the store may be gone with its host rank: the line is still printed
        store.set(_FAILED_RANK_KEY, str(rank()))


def peer_failure(exc: BaseException) -> bool:
    """A collective broken because another rank exited, once ranks may fail apart (see ranks_may_differ)."""
    return (not _same_on_every_rank and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
            and isinstance(exc, RuntimeError) and bool(_PEER_GONE.search(str(exc))))


def report_peer_failure(program: str) -> None:
    """One line instead of the traceback of a broken collective, naming the rank that failed."""
    failed = None
    store = _process_group_store()
    if store is not None:
        with contextlib.suppress(Exception):  # gone with its host rank, or the failed rank left no word
            store.set_timeout(datetime.timedelta(seconds=5))
            failed = store.get(_FAILED_RANK_KEY).decode()
    who = f"rank {failed}" if failed is not None else "another rank"
    _print(f"[rank {rank()}] {program}: stopped because {who} failed; see {who}'s error")


def _close_progress_bars() -> None:
    """A tqdm bar left open (training stopped mid-epoch) would share its line with the message."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


@contextlib.contextmanager
def _quiet_argparse_on_other_ranks():
    """Bad flags are the same on every rank: let rank 0 alone print argparse's usage and message."""
    if rank() == 0:
        yield
        return
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = lambda self, message: sys.exit(EXIT_CODE)
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run(main, *args, program: str | None = None):
    """Call `main(*args)` as a command: exit 0 (or the int it returns), 2 with one line for a clear error.

    Use in every entry point: `if __name__ == "__main__": run(main)`.
    """
    sys.exit(status(main, *args, program=program))


def status(main, *args, program: str | None = None) -> int:
    """`run` without the exit: the command's exit status (a clear error's line is printed).

    For a `main(argv)` that tests call and that returns its exit status (the data tools).
    """
    if program is None:  # what the user ran: `python -m llava.eval.model_vqa` or `python scripts/x.py`
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        program = spec.name if spec is not None else os.path.basename(sys.argv[0]) or "llava"
    try:
        with _quiet_argparse_on_other_ranks():
            result = main(*args)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        report(exc, program)
        return EXIT_CODE
    except Exception as exc:
        if not debug() and peer_failure(exc):
            report_peer_failure(program)
            # With a peer gone, the communication library's threads abort the interpreter's normal
            # shutdown ("terminate called without an active exception"): leave at once, output flushed.
            sys.stderr.flush()
            os._exit(EXIT_CODE)
        if debug() or not is_clear(exc):
            raise
        report(exc, program)
        return EXIT_CODE
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
