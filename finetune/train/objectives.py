"""What a run optimises, and the trainer class that optimises it.

An objective is the loss a run minimises and the batches that loss reads: the trainer class
that computes it, the collator that builds its batches from the data layer's samples and the
metrics its evaluation adds. Today the objective follows the model's head (`model.task`):
next-token prediction, masked tokens, seq2seq targets and class labels, all through
transformers' `Trainer` (`GuardedTrainer`), each with its own collator. An objective with its
own trainer (TRL's `DPOTrainer`, `RewardTrainer`, `GRPOTrainer`, ...) is one more entry in
`OBJECTIVES`; the setup around it (`finetune.train.runner.prepare_run`) stays the same.

The engine is chosen apart from the objective: a pipeline-parallel run replaces the
objective's trainer with `PipelineTrainer`, which drives DeepSpeed's PipelineEngine behind
the same interface (next-token prediction only: preflight refuses the others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import EvalPrediction, PreTrainedTokenizerBase

from finetune.config.data import DataConfig
from finetune.data.collator import (
    ClassificationCollator,
    MaskedLMCollator,
    Seq2SeqCollator,
    build_collator,
)
from finetune.train.divergence import GuardedTrainer


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Classification accuracy, for the Trainer's `compute_metrics`."""
    logits = (
        prediction.predictions[0]
        if isinstance(prediction.predictions, tuple)
        else prediction.predictions
    )
    return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}


Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class Objective:
    """One training objective: its trainer class, batches and evaluation metrics."""

    trainer: type
    """The Trainer subclass whose loss this objective is."""
    collator: Callable[[DataConfig, PreTrainedTokenizerBase, int], Collate]
    """(data section, tokenizer, seed) -> the collator of its batches."""
    metrics: Callable[[EvalPrediction], dict[str, float]] | None = None
    """The Trainer's `compute_metrics`, when evaluation reports more than the loss."""


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(
        GuardedTrainer, lambda data, tokenizer, seed: build_collator(data, tokenizer.pad_token_id)
    ),
    "masked_lm": Objective(
        GuardedTrainer, lambda data, tokenizer, seed: MaskedLMCollator(tokenizer, seed=seed)
    ),
    "seq2seq": Objective(
        GuardedTrainer, lambda data, tokenizer, seed: Seq2SeqCollator(tokenizer.pad_token_id)
    ),
    "sequence_classification": Objective(
        GuardedTrainer,
        lambda data, tokenizer, seed: ClassificationCollator(tokenizer.pad_token_id),
        accuracy,
    ),
}


def objective_of(task: str) -> Objective:
    """The objective a model built for `task` trains with."""
    return OBJECTIVES[task]
