"""Pipeline-parallel training behind transformers' Trainer interface.

transformers' Trainer cannot drive DeepSpeed's PipelineEngine: the engine's step is
`train_batch`, which runs every micro-batch of an optimizer step through the stages itself.
`PipelineTrainer` has the Trainer's shape instead (`train`, `evaluate`, `save_model`, `state`,
`callback_handler`, `add_callback`/`pop_callback`) and fires the Trainer's callback events in
the Trainer's order, so one setup (`finetune.train.runner.prepare_run`) builds either, and the
same callbacks write the metrics file, seal and rotate checkpoints, stop on SIGTERM, feed the
watchdog, push checkpoints to the Hub and show the progress bar. transformers'
`DefaultFlowCallback` decides when to log, evaluate, save and stop, as in a Trainer run.

As in the Trainer: the data order (accelerate's seeded sampler, batch i to data-parallel rank
i % data_parallel), AdamW without weight decay on biases and norm weights, the step count and
learning-rate schedule, the logged learning rate (the rate the step used), the loss of a step
(the mean over every label token of the global batch, not a mean of micro-batch means),
tokens counted without padding, and checkpoints holding a Hugging Face model beside the
engine's state. Where it differs: a step always takes `gradient_accumulation_steps`
micro-batches (the engine's unit), so the micro-batches left at the end of an epoch start the
next epoch's first step, and evaluation reports the loss only, over whole groups of
micro-batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import BatchSampler, Dataset, SequentialSampler
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainingArguments,
    get_scheduler,
    set_seed,
)
from transformers.trainer import DEFAULT_CALLBACKS, DEFAULT_PROGRESS_CALLBACK
from transformers.trainer_callback import (
    CallbackHandler,
    ExportableState,
    TrainerControl,
    TrainerState,
)
from transformers.trainer_utils import TrainOutput, speed_metrics

from finetune.distributed.pipeline import pipeline_module
from finetune.train.divergence import diverged

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # transformers' name, read back on resume
Batch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]  # ((ids, mask), labels)


class PipelineTrainer:
    """Train `model` cut into `stages` pipeline stages, as transformers' Trainer would.

    Args:
        model: the Hugging Face causal LM, whole on every rank; each rank trains the layers
            of its own stage in place.
        args: the run's TrainingArguments (without `deepspeed`: the engine's configuration
            is `deepspeed_config`).
        stages: the number of pipeline stages; the world size divided by it is the
            data-parallel size.
        deepspeed_config: the DeepSpeed configuration (ZeRO 0 or 1), its batch values
            resolved for the data-parallel size (`resolve_batch_values`).
        callbacks: the run's callbacks, after transformers' default ones.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        args: TrainingArguments,
        stages: int,
        deepspeed_config: dict[str, Any],
        train_dataset: Dataset,
        eval_dataset: Dataset | None,
        data_collator,
        processing_class: PreTrainedTokenizerBase,
        callbacks: list[TrainerCallback],
    ) -> None:
        import deepspeed

        set_seed(args.seed)  # as the Trainer does when it is built
        self.model, self.args = model, args
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.data_collator, self.processing_class = data_collator, processing_class
        self.is_deepspeed_enabled = True
        self.loss_fn = _GlobalTokenMean(model)
        module = pipeline_module(model, stages, self.loss_fn, partition_method="parameters")
        self.data_parallel = dist.get_world_size() // stages
        self.max_steps, self.steps_per_epoch = _step_counts(
            args, len(train_dataset), self.data_parallel
        )
        optimizer = _optimizer(module, args)
        scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            args.get_warmup_steps(self.max_steps),
            self.max_steps,
        )
        self.model_wrapped, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config,
        )
        from transformers.integrations import get_reporting_integration_callbacks

        defaults = DEFAULT_CALLBACKS + get_reporting_integration_callbacks(args.report_to)
        self.callback_handler = CallbackHandler(
            defaults + callbacks, model, processing_class, self.optimizer, self.lr_scheduler
        )
        self.add_callback(DEFAULT_PROGRESS_CALLBACK)
        self.control = TrainerControl()
        self.state = self._new_state()
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    # The Trainer's callback list methods
    def add_callback(self, callback: type[TrainerCallback] | TrainerCallback) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def _new_state(self) -> TrainerState:
        return self._with_references(
            TrainerState(
                stateful_callbacks=[
                    cb
                    for cb in [*self.callback_handler.callbacks, self.control]
                    if isinstance(cb, ExportableState)
                ],
            )
        )

    def _with_references(self, state: TrainerState) -> TrainerState:
        """`state` with this run's step counts and process roles (which a resumed run may
        have changed: a higher `max_steps` trains further)."""
        state.is_local_process_zero = self.args.local_process_index == 0
        state.is_world_process_zero = self.args.process_index == 0
        state.max_steps = self.max_steps
        state.num_train_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        state.train_batch_size = self.args.per_device_train_batch_size
        state.compute_steps(self.args, self.max_steps)
        return state

    def train(self, resume_from_checkpoint: str | None = None) -> TrainOutput:
        """Steps up to `max_steps` (from a checkpoint's step with `resume_from_checkpoint`)."""
        engine, args = self.model_wrapped, self.args
        self.state = self._new_state()
        if resume_from_checkpoint is not None:
            self._load_checkpoint(Path(resume_from_checkpoint))
        batches = _train_batches(
            self.train_dataset,
            self.data_collator,
            args,
            self.data_parallel,
            engine.grid.data_parallel_id,
        )
        accumulation = args.gradient_accumulation_steps
        for _ in range(self.state.global_step * accumulation):  # continue the data order
            next(batches)
        start_time, first_step = time.time(), self.state.global_step
        self._tokens_at_start = self.state.num_input_tokens_seen
        self._loss_since_log = self._total_loss = 0.0
        self._step_last_logged = self.state.global_step
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        while self.state.global_step < self.max_steps:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            micro_batches = [next(batches) for _ in range(accumulation)]
            self.loss_fn.prepare(micro_batches, engine)
            learning_rate = self.lr_scheduler.get_last_lr()[0]  # the rate this step uses
            loss = engine.train_batch(data_iter=iter(micro_batches)).item()
            self.loss_fn.items = None
            if not math.isfinite(loss):  # the same on every rank: the engine reduces it
                raise diverged(self.state.global_step + 1, "loss", loss)
            self._loss_since_log += loss
            self.state.num_input_tokens_seen += self._data_parallel_sum(
                sum(int(mask.sum()) for (_, mask), _ in micro_batches)
            )
            epoch_before = int(self.state.epoch or 0)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / self.steps_per_epoch
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            self._maybe_log_save_evaluate(learning_rate, start_time)
            if self.control.should_training_stop:
                break
            if int(self.state.epoch) > epoch_before:
                self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
                self._maybe_log_save_evaluate(learning_rate, start_time)
                self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
        return self._finish(start_time, first_step)

    def _maybe_log_save_evaluate(self, learning_rate: float, start_time: float) -> None:
        if self.control.should_log and self.state.global_step > self._step_last_logged:
            logs = {
                "loss": self._loss_since_log / (self.state.global_step - self._step_last_logged),
                "learning_rate": learning_rate,
            }
            norm = self.model_wrapped.get_global_grad_norm()
            if norm is not None:
                logs["grad_norm"] = float(norm)
            self._total_loss += self._loss_since_log
            self._loss_since_log = 0.0
            self._step_last_logged = self.state.global_step
            self.log(logs, start_time)
        if self.control.should_evaluate:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _finish(self, start_time: float, first_step: int) -> TrainOutput:
        self._total_loss += self._loss_since_log
        steps = self.state.global_step - first_step
        train_loss = self._total_loss / max(steps, 0.001)
        metrics = speed_metrics(
            "train",
            start_time,
            num_samples=steps
            * self.args.gradient_accumulation_steps
            * self.data_parallel
            * self.args.per_device_train_batch_size,
            num_steps=steps,
        )
        metrics["total_flos"] = self.state.total_flos
        metrics["train_loss"] = train_loss
        self.log(metrics)
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record `logs` in the state's history and hand them to the callbacks, as the
        Trainer's `log` does."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        if start_time is not None:
            tokens = self.state.num_input_tokens_seen - self._tokens_at_start
            logs.update(speed_metrics("train", start_time, num_tokens=tokens))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def evaluate(self, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The mean loss on the evaluation set, logged and returned as the Trainer's
        `evaluate` returns it (`{prefix}_loss`, runtime and throughput)."""
        start = time.time()
        loss, micro_batches = self._evaluation_loss()
        metrics = {
            f"{metric_key_prefix}_loss": loss,
            **speed_metrics(
                metric_key_prefix,
                start,
                num_samples=micro_batches * self.args.per_device_eval_batch_size,
                num_steps=micro_batches,
            ),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics=metrics
        )
        return metrics

    def _evaluation_loss(self) -> tuple[float, int]:
        """Mean loss over whole groups of micro-batches (`eval_batch` runs one group, on
        every data-parallel rank together), and the micro-batches it read on this rank."""
        engine, dataset = self.model_wrapped, self.eval_dataset
        batches = list(
            BatchSampler(SequentialSampler(dataset), self.args.per_device_eval_batch_size, False)
        )
        group = self.args.gradient_accumulation_steps
        runs = len(batches) // (group * self.data_parallel)  # the same count on every rank
        if runs == 0:
            logger.warning(
                "evaluation: %d batches of %d rows are fewer than one pipeline step "
                "(%d micro-batches on each of %d data-parallel ranks); no loss computed",
                len(batches),
                self.args.per_device_eval_batch_size,
                group,
                self.data_parallel,
            )
            return float("nan"), 0
        mine = batches[engine.grid.data_parallel_id :: self.data_parallel][: runs * group]
        data = iter([_pipe_batch(self.data_collator([dataset[i] for i in b])) for b in mine])
        losses = [engine.eval_batch(data).item() for _ in range(runs)]
        return sum(losses) / runs, len(mine)

    def _save_checkpoint(self) -> None:
        """The engine's state (every stage's part), the Hugging Face model (gathered on the
        main rank) and the trainer state, under `checkpoint-N`; sealed by CheckpointMarker."""
        root = Path(self.args.output_dir)
        tag = f"checkpoint-{self.state.global_step}"
        self.model_wrapped.save_checkpoint(
            str(root), tag=tag, client_state={"step": self.state.global_step}
        )
        self.save_model(str(root / tag))
        if self.args.process_index == 0:
            self.processing_class.save_pretrained(str(root / tag))
            self.state.stateful_callbacks["TrainerControl"] = self.control.state()
            self.state.save_to_json(str(root / tag / TRAINER_STATE))

    def _load_checkpoint(self, checkpoint: Path) -> None:
        _, client = self.model_wrapped.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
        saved = checkpoint / TRAINER_STATE
        if saved.is_file():
            self.state = self._with_references(TrainerState.load_from_json(str(saved)))
        else:  # saved before checkpoints held the trainer state: the step is enough
            self.state.global_step = int(client["step"])
            self.state.epoch = self.state.global_step / self.steps_per_epoch

    def save_model(self, output_dir: str) -> None:
        """Gather every stage's trained weights on the main rank and save a Hugging Face
        model in `output_dir` there. Call it on every rank.

        Each rank's `model` holds trained weights only for the modules of its own stage.
        """
        local = {id(p) for p in self.model_wrapped.module.parameters()}
        mine = {
            name: p.detach().cpu()
            for name, p in self.model.named_parameters(remove_duplicate=False)
            if id(p) in local
        }
        is_main = self.args.process_index == 0
        parts: list[dict[str, torch.Tensor] | None] | None = (
            [None] * dist.get_world_size() if is_main else None
        )
        dist.gather_object(mine, parts, dst=0)
        if is_main:
            state = {name: t for part in parts or [] for name, t in (part or {}).items()}
            self.model.load_state_dict(state, strict=False)
            self.model.save_pretrained(output_dir)
        dist.barrier()

    def _data_parallel_sum(self, value: int) -> int:
        """`value` summed over the data-parallel ranks (each stage reads the same batches)."""
        total = torch.tensor(value)
        dist.all_reduce(total, group=self.model_wrapped.grid.get_data_parallel_group())
        return int(total)


def _step_counts(args: TrainingArguments, rows: int, data_parallel: int) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch), counted as the Trainer counts them."""
    batches_per_rank = math.ceil(math.ceil(rows / args.per_device_train_batch_size) / data_parallel)
    per_epoch = max(batches_per_rank // args.gradient_accumulation_steps, 1)
    if args.max_steps > 0:
        return args.max_steps, per_epoch
    return math.ceil(args.num_train_epochs * per_epoch), per_epoch


def _optimizer(module: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it: no weight decay on biases and norm weights."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )


def _train_batches(
    dataset: Dataset, collate, args: TrainingArguments, data_parallel: int, dp_rank: int
) -> Iterator[Batch]:
    """Micro-batches for this data-parallel rank, epoch after epoch, in the Trainer's order:
    accelerate's seeded sampler, and batch i to data-parallel rank i % data_parallel."""
    sampler = SeedableRandomSampler(data_source=dataset, data_seed=args.seed)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        batches = list(BatchSampler(sampler, args.per_device_train_batch_size, drop_last=False))
        usable = len(batches) - len(batches) % data_parallel  # every rank gets a batch
        for indices in batches[dp_rank:usable:data_parallel]:
            yield _pipe_batch(collate([dataset[i] for i in indices]))
        epoch += 1


def _pipe_batch(batch: dict[str, torch.Tensor]) -> Batch:
    # First stage reads the inputs, last stage the labels.
    return (batch["input_ids"], batch["attention_mask"]), batch["labels"]


class _GlobalTokenMean:
    """The pipeline's loss function: cross-entropy summed over a micro-batch's label tokens
    and divided so that DeepSpeed's averaging (over accumulation steps, then data-parallel
    ranks) yields the mean over all label tokens of the step, as the Trainer computes it.

    `items` is set by the training loop before each step; unset (evaluation) the loss is
    the micro-batch's own token mean.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.items: float | None = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        vocab_size = self.model.config.vocab_size
        if self.items is None:
            return self.model.loss_function(logits, labels, vocab_size=vocab_size)
        return self.model.loss_function(
            logits, labels, vocab_size=vocab_size, num_items_in_batch=self.items
        )

    def prepare(self, micro_batches: list[Batch], engine) -> None:
        """Count the label tokens of the step on every data-parallel rank."""
        labels = [batch[1] for batch in micro_batches]
        tokens = torch.tensor(sum(int((y[..., 1:] != -100).sum()) for y in labels))
        dist.all_reduce(tokens, group=engine.grid.get_data_parallel_group())
        averaged_over = len(micro_batches) * engine.grid.get_data_parallel_world_size()
        self.items = max(int(tokens), 1) / averaged_over
