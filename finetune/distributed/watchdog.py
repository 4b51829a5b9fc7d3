"""End a distributed run whose ranks stop making progress.

The process-group timeout (`distributed.timeout_s`) covers collectives on the default
group, but DeepSpeed runs ZeRO's reductions on groups it creates itself, and torch gives
those its own 30-minute default. A rank that hangs (or is stopped) would then hold every
other rank for half an hour. This watchdog bounds that: once training has begun, a rank
that completes no step, evaluation or save for `timeout_s` seconds exits with
`EXIT_CODE`, and the launcher (deepspeed, torchrun) then stops the remaining ranks.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from transformers import TrainerCallback

from finetune.config.schema import DistributedConfig
from finetune.distributed.launch import launched_world_size

EXIT_CODE = 3


class Watchdog:
    """A daemon thread that exits the process when `beat` is not called for `timeout_s`."""

    def __init__(self, timeout_s: float, rank: int = 0) -> None:
        self.timeout_s, self.rank = timeout_s, rank
        self._last = time.monotonic()
        self._armed = False
        self._thread = threading.Thread(target=self._watch, daemon=True, name="watchdog")
        self._thread.start()

    def arm(self) -> None:
        self._last, self._armed = time.monotonic(), True

    def disarm(self) -> None:
        self._armed = False

    def beat(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        interval = min(5.0, self.timeout_s / 10)
        while True:
            time.sleep(interval)
            idle = time.monotonic() - self._last
            if self._armed and idle > self.timeout_s:
                sys.stderr.write(
                    f"\nerror: rank {self.rank} made no training progress for {idle:.0f} s "
                    f"(distributed.timeout_s={self.timeout_s:g}): another rank died or hangs. "
                    "Exiting so the launcher stops the job.\n"
                )
                sys.stderr.flush()
                os._exit(EXIT_CODE)


class WatchdogCallback(TrainerCallback):
    """Feeds a `Watchdog` from the Trainer's events."""

    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.watchdog.arm()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.watchdog.disarm()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.watchdog.beat()

    on_substep_end = on_evaluate = on_save = on_log = on_step_end


def watchdog_callbacks(cfg: DistributedConfig) -> list[TrainerCallback]:
    """A watchdog callback for a launched multi-rank DeepSpeed run; none otherwise."""
    if not cfg.enabled or launched_world_size() == 1:
        return []
    return [WatchdogCallback(Watchdog(cfg.timeout_s, int(os.environ.get("RANK", "0"))))]
