"""Trainer callbacks that write the run's own records."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class MetricsLogger(TrainerCallback):
    """Append every log event (loss, learning rate, eval loss...) to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.monotonic()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        record["elapsed_s"] = round(time.monotonic() - self.start, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
