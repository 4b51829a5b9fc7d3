"""Trainer callbacks that write the run's own records and show its progress."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from finetune.distributed.zero import held_parameters
from finetune.train.checkpoints import rotate_checkpoints, seal_checkpoint


class MetricsLogger(TrainerCallback):
    """Append every log event to a JSON-lines file, with tokens/s and (for a language
    model's loss, `perplexity`) perplexity added.

    It mutates the logs it receives, so callbacks after it (the progress bar) show the
    added values too.
    """

    def __init__(self, path: Path, perplexity: bool = True) -> None:
        self.path = path
        self.perplexity = perplexity
        self.start = time.monotonic()
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args, state: TrainerState, control, **kwargs) -> None:
        self._last = (time.monotonic(), state.num_input_tokens_seen)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        if not logs:
            return
        now = time.monotonic()
        if "loss" in logs and self._last is not None:
            seconds, tokens = now - self._last[0], state.num_input_tokens_seen - self._last[1]
            if seconds > 0 and tokens > 0:
                logs["tokens_per_second"] = round(tokens / seconds, 1)
            self._last = (now, state.num_input_tokens_seen)
        if "eval_loss" in logs and self.perplexity:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        if not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        record["elapsed_s"] = round(now - self.start, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class CheckpointMarker(TrainerCallback):
    """Seal each checkpoint once every rank has written its part, then rotate.

    The Trainer's own rotation is off (`save_total_limit=None` in its arguments): it runs
    before `on_save`, so with one checkpoint kept a kill between the two left none. Here the
    new checkpoint's manifest is on disk before any older checkpoint is deleted.
    """

    def __init__(self, keep: int | None = None, checksums: bool = True) -> None:
        self.keep = keep
        self.checksums = checksums

    def on_save(self, args: TrainingArguments, state: TrainerState, control, **kwargs) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's shards and RNG state are written
        if state.is_world_process_zero:
            root = Path(args.output_dir)
            seal_checkpoint(root / f"checkpoint-{state.global_step}", self.checksums)
            rotate_checkpoints(root, self.keep)


class ProgressBar(ProgressCallback):
    """The Trainer's progress bar, with loss, learning rate and tokens/s beside it.

    Training logs go to the bar's postfix instead of a printed dict per log step;
    evaluation results are still printed.
    """

    def on_log(self, args, state: TrainerState, control, logs=None, **kwargs) -> None:
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            postfix = {"loss": f"{logs['loss']:.4g}"}
            if "learning_rate" in logs:
                postfix["lr"] = f"{logs['learning_rate']:.3g}"
            if "tokens_per_second" in logs:
                postfix["tok/s"] = f"{logs['tokens_per_second']:.0f}"
            self.training_bar.set_postfix(postfix, refresh=False)
        elif any(key.startswith("eval_") for key in logs):
            shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items()}
            self.training_bar.write(str(shown))


class HeldParameters(TrainerCallback):
    """Record what this rank holds of the model's parameters after the first optimizer step:
    under ZeRO-3 the parameters' own data is empty then and the weights live in shards."""

    def __init__(self) -> None:
        self.held: dict[str, int] | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if self.held is None and model is not None:
            self.held = held_parameters(model)
