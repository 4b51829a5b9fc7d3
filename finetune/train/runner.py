"""One training run, from a validated config to a saved Hugging Face model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import ProgressCallback

from finetune.config.loader import dump_config
from finetune.config.objective import PREFERENCE_OBJECTIVES
from finetune.config.schema import RunConfig
from finetune.data.cache import cache_root
from finetune.data.pipeline import PreparedData, prepare_data
from finetune.data.tokenizer import MASK_TOKEN, shared_tokenizer
from finetune.distributed.deepspeed import deepspeed_config, resolve_batch_values
from finetune.distributed.launch import (
    gather_per_rank,
    init_process_group,
    peak_memory_per_rank,
    shutdown_process_group,
)
from finetune.distributed.watchdog import watchdog_callbacks
from finetune.distributed.zero import gathered_parameters
from finetune.errors import Interrupted, StorageError, TrainingDiverged, disk_full
from finetune.evaluate import (
    exact_match,
    held_out_scores,
    prompt_answer_pairs,
    reference_field,
)
from finetune.hub import check_hub, hub_callbacks, push_trained
from finetune.layout import BASE_MODEL, CHECKPOINTS, MERGED, METRICS, RUN_CONFIG, RUN_INFO
from finetune.methods import apply_method, load_base_model, trainable_parameters
from finetune.methods.merge import merge_adapter
from finetune.preflight import preflight
from finetune.train.arguments import optimizer_class, training_arguments
from finetune.train.callbacks import (
    CheckpointMarker,
    HeldParameters,
    MetricsLogger,
    ProgressBar,
)
from finetune.train.checkpoints import latest_checkpoint, open_output_dir
from finetune.train.divergence import DivergenceGuard
from finetune.train.objectives import arguments_class, build_trainer, head_labels, objective_of
from finetune.train.output import replacing, staged_save, unlock_output_dir
from finetune.train.stopping import GracefulStop

if TYPE_CHECKING:
    from finetune.train.pipeline_trainer import PipelineTrainer

logger = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """Everything built for a run, up to (not including) the first optimizer step."""

    cfg: RunConfig
    args: TrainingArguments
    trainer: Trainer | PipelineTrainer
    tokenizer: PreTrainedTokenizerBase
    out: Path
    resume_from: Path | None = None
    parameters: tuple[int, int] = (0, 0)
    exact_match_pairs: list[tuple[str, str]] = field(default_factory=list)
    untrained_metrics: dict[str, float] = field(default_factory=dict)
    sources_tokenized: int = 0
    """Data sources this rank tokenized itself (the others came from the cache)."""
    held_out: Any | None = None
    """The evaluation rows as the data layer made them (preference pairs or feedback),
    which a preference objective's own scores read (`_preference`)."""


def train(
    cfg: RunConfig,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Run `cfg` end to end and return the run summary written to run_info.json.

    `callbacks` (transformers `TrainerCallback`s) are added after the run's own, on every
    engine.
    """
    try:
        summary = execute(prepare_run(cfg, overwrite, resume, callbacks))
    except (Interrupted, TrainingDiverged):
        shutdown_process_group()  # every rank stopped after the same step: end together
        raise
    except Exception as err:
        out, cache = Path(cfg.output.dir), cache_root(cfg.data.cache_dir)
        full = disk_full(err, [out, cache])
        if full is None:
            raise
        raise StorageError(_disk_full_message(full, out, cache)) from err
    finally:
        unlock_output_dir(Path(cfg.output.dir))
    # Not after other errors: they may be one rank's, and a barrier would wait for ranks
    # that are stuck in a collective (the launcher ends them once this rank exits).
    shutdown_process_group()
    return summary


def _disk_full_message(where: Path, out: Path, cache: Path) -> str:
    what = "the data cache (data.cache_dir)" if where == cache else str(where)
    newest = latest_checkpoint(out / CHECKPOINTS) if out.is_dir() else None
    if newest is not None:
        then = (
            f"the checkpoints saved before it are intact (newest: {newest.name}); free "
            "space, then run the same command with --resume"
        )
    else:
        again = "with --overwrite" if (out / RUN_CONFIG).is_file() else "again"
        then = f"free space (or choose a disk with room) and run the command {again}"
    return f"no space left on device for {what}; {then}"


def prepare_run(
    cfg: RunConfig,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> PreparedRun:
    """Check, read the data, build the model and the Trainer.

    Order matters: checks first, then data, and only then anything written to the output
    directory, so a bad config or data row never touches an earlier run's files.
    """
    preflight(cfg)
    check_hub(cfg.hub, cfg.output)  # a push_to_hub run needs a token the Hub accepts
    out = Path(cfg.output.dir)
    ds_config = deepspeed_config(cfg.distributed, cfg.train)
    stages = cfg.distributed.pipeline_stages
    has_eval = bool(cfg.data.eval) or cfg.data.eval_ratio > 0
    init_process_group(cfg.distributed)  # before a ZeRO-3 model is built, with the timeout
    args_class, options = arguments_class(cfg)
    args = training_arguments(
        cfg.train,
        cfg.logging,
        cfg.output,
        ds_config if stages == 1 else None,  # a pipeline's engine is built by its trainer
        has_eval,
        cfg.distributed.timeout_s,
        args_class,
        **options,
    )
    resume_from = open_output_dir(cfg, overwrite, resume, args.process_index == 0, _barrier)

    tokenizer = _run_tokenizer(cfg, resume)
    # Global rank 0 first, not each node's local rank 0: nodes that share a disk then share
    # one cache entry, written once, and the other ranks read it.
    with args.main_process_first(local=False, desc="tokenizing"):
        data = prepare_data(cfg.data, tokenizer, cfg.train.seed)
    pairs = []
    if cfg.train.exact_match_rows:
        pairs = prompt_answer_pairs(
            cfg.data.eval[0], tokenizer, cfg.train.exact_match_rows, reference_field(cfg)
        )

    with replacing(out, overwrite, is_main=args.process_index == 0):
        if args.process_index == 0:
            (out / RUN_CONFIG).write_text(dump_config(cfg))
            tokenizer.save_pretrained(str(out))
        _barrier()
        model = _build_model(cfg, tokenizer, out, args.process_index == 0)
    trainable, total = trainable_parameters(model)
    logger.info(
        "trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total
    )

    trainer = _build_trainer(cfg, args, model, tokenizer, data, ds_config, callbacks)
    return PreparedRun(
        cfg,
        args,
        trainer,
        tokenizer,
        out,
        resume_from,
        parameters=(trainable, total),
        exact_match_pairs=pairs,
        sources_tokenized=sum(not source.cached for source in data.sources),
        held_out=data.eval,
    )


def _run_tokenizer(cfg: RunConfig, resume: bool) -> PreTrainedTokenizerBase:
    """The run's tokenizer, the same on every rank. A resumed run reuses the tokenizer it
    saved, rather than training a new one."""
    if resume:
        tokenizer = AutoTokenizer.from_pretrained(cfg.output.dir)
    else:
        tokenizer = shared_tokenizer(
            cfg.tokenizer, cfg.data, cfg.model.name_or_path, cfg.model.trust_remote_code
        )
    if cfg.model.task == "masked_lm" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    return tokenizer


def _build_trainer(
    cfg: RunConfig,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    ds_config: dict[str, Any] | None,
    extra_callbacks: list[TrainerCallback] | None,
) -> Trainer | PipelineTrainer:
    """The objective's trainer (or, with pipeline stages, the pipeline's) with the run's
    callbacks: the same ones whatever the engine."""
    stages, out = cfg.distributed.pipeline_stages, Path(cfg.output.dir)
    callbacks = [
        MetricsLogger(out / METRICS, perplexity=cfg.objective.type == "sft"),
        CheckpointMarker(cfg.output.save_total_limit, cfg.output.checkpoint_checksums),
        GracefulStop(cfg.output.stop_grace_s),
        DivergenceGuard(),
        HeldParameters(),
        *watchdog_callbacks(cfg.distributed),
        *hub_callbacks(cfg.hub, out),
        *(extra_callbacks or []),
    ]
    if stages > 1:  # DeepSpeed's PipelineEngine, behind the Trainer's interface
        from finetune.train.pipeline_trainer import PipelineTrainer

        objective = objective_of(cfg.model.task)  # next-token prediction (the config checks)
        collator = objective.collator(cfg.data, tokenizer, cfg.train.seed)
        data_parallel = args.world_size // stages
        trainer = PipelineTrainer(
            model=model,
            args=args,
            stages=stages,
            deepspeed_config=resolve_batch_values(ds_config, cfg.train, data_parallel),
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    else:
        trainer = build_trainer(
            cfg,
            args,
            model,
            tokenizer,
            data.train,
            data.eval,
            callbacks,
            optimizer_class(cfg.train),
            reference=lambda: _reference_model(cfg, tokenizer),
        )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBar())
    return trainer


def execute(run: PreparedRun) -> dict[str, Any]:
    """Train, evaluate, save the final model and write run_info.json."""
    trainer, out = run.trainer, run.out
    has_eval = trainer.eval_dataset is not None
    if has_eval and run.cfg.train.eval_untrained and run.resume_from is None:
        run.untrained_metrics = trainer.evaluate(metric_key_prefix="untrained")
        run.untrained_metrics.update(_exact_match(run, "untrained_exact_match"))
        run.untrained_metrics.update(_preference(run, "untrained"))
    resume_from = str(run.resume_from) if run.resume_from else None
    metrics = dict(trainer.train(resume_from_checkpoint=resume_from).metrics)
    stop = _callback(trainer, GracefulStop)
    if stop.stopped_after is not None:  # SIGTERM/SIGINT: the checkpoint is the result
        raise stop.error()
    if has_eval:
        metrics.update(trainer.evaluate())
        metrics.update(_exact_match(run, "exact_match"))
        metrics.update(_preference(run, "eval"))

    trainer.model.config.use_cache = True  # saved for generation, where the cache helps
    with staged_save(out, run.args.process_index == 0) as staging:
        trainer.save_model(str(staging))
        _barrier()  # every rank is done with it (ZeRO-3 gathers the weights on all ranks)
    summary = {
        "objective": run.cfg.objective.type,
        "world_size": run.args.world_size,
        "engine": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "trainable_parameters": run.parameters[0],
        "total_parameters": run.parameters[1],
        "metrics": metrics,
        "untrained_metrics": run.untrained_metrics,
        "peak_memory_mb_per_rank": peak_memory_per_rank(),
        "parameters_held_per_rank": gather_per_rank(_held_parameters(trainer)),
        "sources_tokenized_per_rank": gather_per_rank(run.sources_tokenized),
    }
    if run.args.process_index == 0:
        (out / RUN_INFO).write_text(json.dumps(summary, indent=2) + "\n")
        if run.cfg.train.merge_adapter:
            merge_adapter(out, out / MERGED)
        if run.cfg.hub.push_to_hub:  # publish the saved output directory (rank 0 only)
            push_trained(out, run.cfg.hub)
    return summary


def _build_model(
    cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, out: Path, is_main: bool
) -> PreTrainedModel:
    """The model with the run's method applied, its new weights drawn from the run's seed."""
    set_seed(cfg.train.seed)
    quantize = cfg.method if cfg.method.type == "qlora" else None
    model = load_base_model(cfg.model, tokenizer, quantize, head_labels(cfg))
    if cfg.method.type != "full" and cfg.model.architecture is not None:
        _save_new_base(model, out / BASE_MODEL, is_main)
    model = apply_method(model, cfg.method, cfg.train.gradient_checkpointing, cfg.model.task)
    model.config.use_cache = False  # a cache would disable packed-sequence masking
    return model


def _reference_model(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A frozen copy of the model as training starts (the same checkpoint, or the same
    seeded random weights), for an objective that compares against it."""
    set_seed(cfg.train.seed)
    model = load_base_model(cfg.model, tokenizer, None, head_labels(cfg))
    return model.requires_grad_(False).eval()


def _save_new_base(model: PreTrainedModel, path: Path, is_main: bool) -> None:
    """Keep the random base weights an adapter is trained on, and point the adapter at them:
    without them a LoRA adapter on a model built from scratch could never be loaded.
    Under ZeRO-3 the weights are gathered first (every rank takes part)."""
    with gathered_parameters(model):
        if is_main:
            model.save_pretrained(path)
    _barrier()
    model.name_or_path = model.config._name_or_path = str(path.resolve())


def _callback(trainer: Trainer, kind: type[TrainerCallback]) -> TrainerCallback:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, kind))


def _held_parameters(trainer: Trainer) -> dict[str, int] | None:
    """What this rank held of the parameters during training (None before any step)."""
    return _callback(trainer, HeldParameters).held


def _exact_match(run: PreparedRun, key: str) -> dict[str, float]:
    if not run.exact_match_pairs:
        return {}
    score = exact_match(
        run.trainer.model,
        run.tokenizer,
        run.exact_match_pairs,
        max_new_tokens=run.cfg.train.exact_match_max_new_tokens,
    )
    return {key: score}


def _preference(run: PreparedRun, prefix: str) -> dict[str, float]:
    """The model's own preference on held-out pairs, or its log-probabilities of held-out
    desirable and undesirable answers (preference objectives only)."""
    if run.cfg.objective.type not in PREFERENCE_OBJECTIVES or run.held_out is None:
        return {}
    scores = held_out_scores(
        run.trainer.model,
        run.held_out,
        run.tokenizer.pad_token_id,
        run.cfg.train.micro_batch_size,
    )
    return {f"{prefix}_{name}": value for name, value in scores.items()}


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
