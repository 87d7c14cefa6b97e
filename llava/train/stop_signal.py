"""SIGTERM and SIGINT (a container stop, a scheduler's preemption, Ctrl-C) end training cleanly.

The signal only raises a flag. At the next step boundary every rank learns whether any rank got one
(one all-reduce of a single number per step), and then all of them save `checkpoint-N` and stop
together, so the same command resumes from it. A rank that stopped alone would leave the others
waiting in a collective. The final model is not written: the run is not finished.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist
from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)
logger = logging.getLogger("llava.train")


class StopOnSignal(TrainerCallback):
    def __init__(self):
        self.received = 0  # the signal number this rank got, 0 for none
        self.stopped_by = 0  # the signal the run stopped on (any rank's), once it has
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python lets only the main thread set handlers; a caller's thread keeps the defaults
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Back to the handlers before `install`: a signal during the final save ends the process at once."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        # Launchers pass a signal on to their children too: a second one is the same request.
        if not self.received:
            self.received = signum
            logger.warning("received %s: stopping after this step, with a checkpoint", signal.Signals(signum).name)

    def _any_rank_received(self, device) -> int:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        signum = self._any_rank_received(args.device)
        if signum:
            self.stopped_by = signum
            control.should_save = True
            control.should_training_stop = True
        return control
