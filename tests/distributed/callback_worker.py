"""Train a config with a callback that records every Trainer event, then write the events
(on rank 0) as JSON: `python callback_worker.py CONFIG EVENTS`, also under `deepspeed`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from finetune.config.loader import load_config
from finetune.train.runner import train

EVENTS = [name for name in vars(TrainerCallback) if name.startswith("on_")]


class Recorder(TrainerCallback):
    """Each event as [name, global step, sorted log keys (on_log only)]."""

    def __init__(self) -> None:
        self.events: list[list] = []
        self.world_zero = False
        for name in EVENTS:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name: str):
        def record(args, state, control, logs=None, **kwargs) -> None:
            self.world_zero = state.is_world_process_zero
            self.events.append([name, state.global_step, sorted(logs) if logs else None])

        return record


def main(config: str, events: str) -> None:
    recorder = Recorder()
    train(load_config(config), callbacks=[recorder])
    if recorder.world_zero:
        Path(events).write_text(json.dumps(recorder.events))


if __name__ == "__main__":
    main(*[arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")])
