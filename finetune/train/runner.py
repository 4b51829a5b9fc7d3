"""One training run, from a validated config to a saved Hugging Face model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Trainer

from finetune.config.loader import dump_config
from finetune.config.schema import RunConfig
from finetune.data.collator import PaddingCollator
from finetune.data.pipeline import build_datasets, iter_training_texts
from finetune.data.tokenizer import load_tokenizer, train_tokenizer
from finetune.distributed.deepspeed import deepspeed_config
from finetune.methods import apply_method, load_base_model, trainable_parameters
from finetune.preflight import preflight
from finetune.train.arguments import training_arguments
from finetune.train.callbacks import MetricsLogger
from finetune.train.output import (
    CHECKPOINTS,
    METRICS,
    RUN_CONFIG,
    RUN_INFO,
    check_output_dir,
    clear_output_dir,
)

logger = logging.getLogger(__name__)


def train(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run `cfg` end to end and return the run summary written to run_info.json.

    Order matters: checks first, then data, and only then anything written to the output
    directory, so a bad config or data row never touches an earlier run's files.
    """
    preflight(cfg)
    out = Path(cfg.output.dir)
    ds_config = deepspeed_config(cfg.distributed, cfg.train)
    has_eval = bool(cfg.data.eval) or cfg.data.eval_ratio > 0
    args = training_arguments(cfg.train, cfg.logging, cfg.output, ds_config, has_eval)
    check_output_dir(out, overwrite=overwrite, resume=resume)
    _barrier()  # every rank has looked at the directory before rank 0 changes it

    tokenizer = _build_tokenizer(cfg)
    with args.main_process_first(desc="tokenizing"):
        train_set, eval_set = build_datasets(cfg.data, tokenizer, cfg.train.seed)

    if args.process_index == 0:
        if overwrite:
            clear_output_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_CONFIG).write_text(dump_config(cfg))
    _barrier()

    model = apply_method(load_base_model(cfg.model, tokenizer), cfg.method)
    model.config.use_cache = False  # a cache would disable packed-sequence masking
    trainable, total = trainable_parameters(model)
    logger.info(
        "trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total
    )

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MetricsLogger(out / METRICS)],
    )
    result = trainer.train(resume_from_checkpoint=_latest_checkpoint(out) if resume else None)
    metrics = dict(result.metrics)
    if eval_set is not None:
        metrics.update(trainer.evaluate())

    model.config.use_cache = True
    trainer.save_model(str(out))
    summary = {
        "world_size": args.world_size,
        "engine": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "metrics": metrics,
    }
    if args.process_index == 0:
        tokenizer.save_pretrained(str(out))
        (out / RUN_INFO).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _build_tokenizer(cfg: RunConfig) -> PreTrainedTokenizerBase:
    if cfg.tokenizer.train is None:
        source = cfg.tokenizer.name_or_path or cfg.model.name_or_path
        return load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code)
    # Rank 0 trains; the others receive the same tokenizer rather than train their own.
    payload = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        texts = iter_training_texts(cfg.data, limit=cfg.tokenizer.train.max_texts)
        payload[0] = _tokenizer_state(train_tokenizer(texts, cfg.tokenizer.train))
    if dist.is_initialized():
        dist.broadcast_object_list(payload, src=0)
    return _tokenizer_from_state(payload[0])


def _tokenizer_state(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "backend": tokenizer.backend_tokenizer.to_str(),
        "special": tokenizer.special_tokens_map,
        "chat_template": tokenizer.chat_template,
    }


def _tokenizer_from_state(state: dict[str, Any]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(state["backend"]), **state["special"]
    )
    tokenizer.chat_template = state["chat_template"]
    return tokenizer


def _latest_checkpoint(out: Path) -> str:
    """The newest checkpoint whose trainer state was written (the last file saved)."""
    root = out / CHECKPOINTS
    complete = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()
    ]
    if not complete:
        from finetune.errors import OutputDirError

        raise OutputDirError(f"--resume: no complete checkpoint under {root}")
    return str(max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-"))))


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


__all__ = ["train"]
