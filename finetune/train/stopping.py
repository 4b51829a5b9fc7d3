"""SIGTERM and SIGINT end a run cleanly: the step finishes, a checkpoint is saved, the process
exits with a message and 128 + the signal number, and `--resume` continues the same run.

A scheduler sends SIGTERM before preemption and SIGKILL a little later (30 s for the deepspeed
launcher), and it may signal the ranks of a job one after another: the ranks agree on the
stop through an all-reduce at every step, so they stop after the same step and save one
checkpoint together.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from finetune.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop(TrainerCallback):
    """Turn the first SIGTERM/SIGINT into "save a checkpoint after this step and stop"."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None  # the signal this process received
        self.stopped_after: int | None = None  # the step the run stopped after
        self._previous: dict[int, object] = {}
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # the checkpoint is saved: nothing left to rush
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # A second Ctrl-C means "now". SIGTERM often comes twice (the scheduler signals
            # every process, and the launcher passes its own on): the grace time bounds it.
            if signum == signal.SIGINT:
                self._exit_now(signum, "a second SIGINT arrived")
            return
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"[finetune] {name}: finishing this step and saving a checkpoint "
            f"(at most {self.grace_s:g} s)",
            file=sys.stderr,
            flush=True,
        )
        self._timer = threading.Timer(
            self.grace_s, self._exit_now, (signum, "the grace time ran out")
        )
        self._timer.daemon = True
        self._timer.start()

    def _exit_now(self, signum: int, why: str) -> None:
        print(
            f"error: stopped by {signal.Signals(signum).name} before a checkpoint was saved "
            f"({why}); --resume continues from the last complete checkpoint",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    def requested(self) -> int | None:
        """The signal any rank received (the same answer on every rank), or None."""
        value = self.signum or 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([value], dtype=torch.int64)
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            value = int(flag.item())
        return value or None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.install()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        signum = self.requested()
        if signum is not None:
            self.signum = self.signum or signum
            self.stopped_after = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.uninstall()

    def error(self) -> Interrupted:
        """What the run reports once the checkpoint of the stopped step is saved."""
        name = signal.Signals(self.signum).name
        return Interrupted(
            f"stopped by {name} after step {self.stopped_after}; its checkpoint is saved. "
            "Continue the run with the same command and --resume",
            self.signum,
        )
