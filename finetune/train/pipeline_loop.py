"""Pipeline-parallel training: DeepSpeed's PipelineEngine, from the same run schema.

transformers' Trainer cannot drive a PipelineEngine (its step is `train_batch`, which runs
all micro-batches of a step through the stages), so this loop does what the Trainer does
for the other modes, with the same inputs and outputs: the same tokenizer, datasets and
padding collator, the same data order (accelerate's seeded sampler, batches dealt round-robin
to data-parallel ranks), AdamW and learning-rate schedule from the train section, and the
same files: run_config.yaml, metrics.jsonl, checkpoints/checkpoint-N with the completion
marker (resumable with --resume), run_info.json and a Hugging Face model directory.

The loss of a step is the Trainer's too: the mean over every label token of the global batch
(all micro-batches on all data-parallel ranks), not a mean of micro-batch means, so runs with
accumulation or data parallelism match the other modes. Evaluation reports the loss only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import BatchSampler, Dataset, SequentialSampler
from transformers import AutoTokenizer, PreTrainedModel, get_scheduler, set_seed

from finetune.config.loader import dump_config
from finetune.config.schema import RunConfig
from finetune.data.collator import build_collator
from finetune.data.pipeline import build_datasets
from finetune.distributed.deepspeed import deepspeed_config, resolve_batch_values
from finetune.distributed.launch import (
    init_process_group,
    peak_memory_per_rank,
)
from finetune.distributed.pipeline import pipeline_module
from finetune.distributed.watchdog import Watchdog
from finetune.layout import CHECKPOINTS, METRICS, RUN_CONFIG, RUN_INFO
from finetune.methods import load_base_model
from finetune.preflight import preflight
from finetune.train.checkpoints import open_output_dir, rotate_checkpoints, seal_checkpoint
from finetune.train.divergence import diverged
from finetune.train.output import replacing, staged_save
from finetune.train.stopping import GracefulStop

logger = logging.getLogger(__name__)


def train_pipeline(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Train `cfg` with `distributed.pipeline_stages` stages; return the run summary."""
    import deepspeed

    preflight(cfg)
    out = Path(cfg.output.dir)
    init_process_group(cfg.distributed)
    rank = dist.get_rank()
    resume_from = open_output_dir(cfg, overwrite, resume, rank == 0, dist.barrier)

    from finetune.train.runner import _build_tokenizer  # rank 0 trains, others receive

    tokenizer = AutoTokenizer.from_pretrained(out) if resume else _build_tokenizer(cfg)
    train_set, eval_set = _datasets(cfg, tokenizer, rank)
    with replacing(out, overwrite, is_main=rank == 0):
        if rank == 0:
            (out / RUN_CONFIG).write_text(dump_config(cfg))
            tokenizer.save_pretrained(str(out))
        dist.barrier()
        set_seed(cfg.train.seed)  # the same initial weights as a single-process run
        model = load_base_model(cfg.model, tokenizer)
    model.config.use_cache = False

    loss_fn = _GlobalTokenMean(model)
    stages = cfg.distributed.pipeline_stages
    module = pipeline_module(model, stages, loss_fn, partition_method="parameters")
    data_parallel = dist.get_world_size() // stages
    ds = resolve_batch_values(
        deepspeed_config(cfg.distributed, cfg.train), cfg.train, data_parallel
    )
    steps = _total_steps(cfg, len(train_set), data_parallel)
    optimizer = _optimizer(module, cfg)
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, cfg.train.warmup_steps, steps)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds
    )
    start = 0
    if resume_from is not None:
        _, client = engine.load_checkpoint(str(resume_from.parent), tag=resume_from.name)
        start = client["step"]
    collate = build_collator(cfg.data, tokenizer.pad_token_id)
    batches = _train_batches(train_set, collate, cfg, data_parallel, engine.grid.data_parallel_id)
    summary = _loop(engine, batches, loss_fn, cfg, out, start, steps)
    if eval_set is not None:
        summary["metrics"]["eval_loss"] = _evaluate(engine, eval_set, collate, cfg, data_parallel)
        summary["metrics"]["eval_perplexity"] = math.exp(min(summary["metrics"]["eval_loss"], 50))
    _export(model, module, out, rank)
    summary.update(
        world_size=dist.get_world_size(),
        engine=type(engine).__name__,
        pipeline_stages=stages,
        trainable_parameters=sum(p.numel() for p in model.parameters()),
        total_parameters=sum(p.numel() for p in model.parameters()),
        untrained_metrics={},
        peak_memory_mb_per_rank=peak_memory_per_rank(),
    )
    if rank == 0:
        (out / RUN_INFO).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _datasets(cfg: RunConfig, tokenizer, rank: int) -> tuple[Dataset, Dataset | None]:
    # Rank 0 tokenizes (and fills the cache) first; the others then read the cache.
    if rank != 0:
        dist.barrier()
    train_set, eval_set = build_datasets(cfg.data, tokenizer, cfg.train.seed)
    if rank == 0:
        dist.barrier()
    return train_set, eval_set


def _total_steps(cfg: RunConfig, rows: int, data_parallel: int) -> int:
    """Optimizer steps of the run, counted as the Trainer counts them."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    batches_per_rank = math.ceil(math.ceil(rows / cfg.train.micro_batch_size) / data_parallel)
    per_epoch = max(batches_per_rank // cfg.train.gradient_accumulation_steps, 1)
    return math.ceil(cfg.train.epochs * per_epoch)


def _optimizer(module: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it: no weight decay on biases and norm weights."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    train = cfg.train
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=train.lr,
        betas=(train.adam_beta1, train.adam_beta2),
        eps=train.adam_epsilon,
    )


def _train_batches(
    dataset: Dataset, collate, cfg: RunConfig, data_parallel: int, dp_rank: int
) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Micro-batches for this data-parallel rank, epoch after epoch, in the Trainer's order:
    accelerate's seeded sampler, and batch i to data-parallel rank i % data_parallel."""
    sampler = SeedableRandomSampler(data_source=dataset, data_seed=cfg.train.seed)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        batches = list(BatchSampler(sampler, cfg.train.micro_batch_size, drop_last=False))
        usable = len(batches) - len(batches) % data_parallel  # every rank gets a batch
        for indices in batches[dp_rank:usable:data_parallel]:
            yield _pipe_batch(collate([dataset[i] for i in indices]))
        epoch += 1


def _pipe_batch(batch: dict[str, torch.Tensor]):
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

    def prepare(self, micro_batches: list, engine) -> None:
        """Count the label tokens of the step on every data-parallel rank."""
        labels = [batch[1] for batch in micro_batches]
        tokens = torch.tensor(sum(int((y[..., 1:] != -100).sum()) for y in labels))
        dist.all_reduce(tokens, group=engine.grid.get_data_parallel_group())
        averaged_over = len(micro_batches) * engine.grid.get_data_parallel_world_size()
        self.items = max(int(tokens), 1) / averaged_over


def _loop(
    engine,
    batches: Iterator,
    loss_fn: _GlobalTokenMean,
    cfg: RunConfig,
    out: Path,
    start: int,
    steps: int,
) -> dict:
    """Steps `start`..`steps`, logging to metrics.jsonl and saving checkpoints."""
    accumulation = cfg.train.gradient_accumulation_steps
    for _ in range(start * accumulation):  # a resumed run continues in the data order
        next(batches)
    counted = _TokenCounter(batches)
    losses: list[float] = []
    watchdog = Watchdog(cfg.distributed.timeout_s, dist.get_rank())
    watchdog.arm()
    stop = GracefulStop(cfg.output.stop_grace_s)
    stop.install()
    began = last_time = time.monotonic()
    last_tokens, loss, lr = 0, float("nan"), float("nan")
    for step in range(start + 1, steps + 1):
        micro_batches = [next(counted) for _ in range(accumulation)]
        loss_fn.prepare(micro_batches, engine)
        lr = engine.lr_scheduler.get_last_lr()[0]  # the step's rate, as the Trainer logs it
        loss = engine.train_batch(data_iter=iter(micro_batches)).item()
        loss_fn.items = None
        if not math.isfinite(loss):  # the same on every rank: the engine reduces it
            raise diverged(step, "loss", loss)
        losses.append(loss)
        watchdog.beat()
        if step % cfg.logging.steps == 0 or step == steps:
            now = time.monotonic()
            tokens = _all_ranks_sum(counted.tokens, engine) - last_tokens
            record = {
                "step": step,
                "loss": sum(losses) / len(losses),
                "learning_rate": lr,
                "tokens_per_second": round(tokens / max(now - last_time, 1e-9), 1),
                "elapsed_s": round(now - began, 3),
            }
            last_tokens, last_time, losses = last_tokens + tokens, now, []
            if dist.get_rank() == 0:
                with (out / METRICS).open("a") as f:
                    f.write(json.dumps(record) + "\n")
        stopping = stop.requested() is not None  # SIGTERM/SIGINT on any rank
        if stopping or (cfg.output.save_steps and step % cfg.output.save_steps == 0):
            _save_checkpoint(engine, out / CHECKPOINTS, step, cfg)
            watchdog.beat()
        if stopping:
            stop.stopped_after = step
            stop.uninstall()
            raise stop.error()
    stop.uninstall()
    watchdog.disarm()
    runtime = time.monotonic() - began
    return {
        "global_step": steps,
        "tokens_seen": _all_ranks_sum(counted.tokens, engine),
        "metrics": {"train_runtime": round(runtime, 4), "train_loss": loss},
    }


class _TokenCounter:
    """Pass micro-batches through, counting the non-padding tokens this rank reads."""

    def __init__(self, batches: Iterator) -> None:
        self.batches, self.tokens = batches, 0

    def __iter__(self) -> _TokenCounter:
        return self

    def __next__(self):
        (_, attention_mask), _ = batch = next(self.batches)
        self.tokens += int(attention_mask.sum())
        return batch


def _all_ranks_sum(tokens: int, engine) -> int:
    """Tokens read by all data-parallel ranks (each pipeline stage reads the same batches)."""
    total = torch.tensor(tokens)
    dist.all_reduce(total, group=engine.grid.get_data_parallel_group())
    return int(total)


def _save_checkpoint(engine, root: Path, step: int, cfg: RunConfig) -> None:
    tag = f"checkpoint-{step}"
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step})
    dist.barrier()  # every stage has written its part
    if dist.get_rank() == 0:
        seal_checkpoint(root / tag, cfg.output.checkpoint_checksums)
        rotate_checkpoints(root, cfg.output.save_total_limit)


def _evaluate(engine, dataset: Dataset, collate, cfg: RunConfig, data_parallel: int) -> float:
    """Mean evaluation loss over whole groups of micro-batches (the engine's unit)."""
    group = cfg.train.micro_batch_size
    batches = list(BatchSampler(SequentialSampler(dataset), group, drop_last=False))
    dp_rank = engine.grid.data_parallel_id
    mine = batches[dp_rank::data_parallel]
    accumulation = cfg.train.gradient_accumulation_steps
    runs = len(mine) // accumulation
    if runs == 0:
        return float("nan")
    data = iter([_pipe_batch(collate([dataset[i] for i in b])) for b in mine])
    losses = [engine.eval_batch(data).item() for _ in range(runs)]
    return sum(losses) / len(losses)


def _export(model: PreTrainedModel, module: torch.nn.Module, out: Path, rank: int) -> None:
    """Gather every stage's trained weights on rank 0 and save a Hugging Face model there.

    Each rank's `model` holds trained weights only for the modules of its own stage.
    """
    local = {id(p) for p in module.parameters()}
    mine = {
        name: p.detach().cpu()
        for name, p in model.named_parameters(remove_duplicate=False)
        if id(p) in local
    }
    gathered: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    with staged_save(out, rank == 0) as staging:
        if rank == 0:
            state = {name: t for part in gathered for name, t in (part or {}).items()}
            model.load_state_dict(state, strict=False)
            model.config.use_cache = True  # saved for generation, where the cache helps
            model.save_pretrained(str(staging))
    dist.barrier()
