"""What a run optimises, and the trainer class that optimises it.

An objective is the loss a run minimises and the batches that loss reads: the trainer class
that computes it, its arguments class, the collator that builds its batches from the data
layer's samples and the metrics its evaluation adds. `objective: sft` (the default) follows
the model's head (`model.task`): next-token prediction, masked tokens, seq2seq targets and
class labels, all through transformers' `Trainer` (`GuardedTrainer`), each with its own
collator (`TASK_OBJECTIVES`). The others are TRL's trainers on the data layer's tokenized
preference pairs and feedback: `dpo` (`DPOTrainer`), `kto` (`KTOTrainer`), `reward`
(`RewardTrainer`), and the reference-free `cpo` and `simpo` (`CPOTrainer`) and `orpo`
(`ORPOTrainer`) from `trl.experimental`; and the online `grpo` (`GRPOTrainer`) and `rloo`
(`RLOOTrainer`), which sample completions of prompt rows and learn from the rewards of
`finetune.train.rewards`. The setup around them (`finetune.train.runner.prepare_run`) is
the same for all.

The engine is chosen apart from the objective: a pipeline-parallel run replaces the
objective's trainer with `PipelineTrainer`, which drives DeepSpeed's PipelineEngine behind
the same interface (next-token prediction only: the config refuses the others).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import (
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from finetune.config.data import DataConfig
from finetune.config.objective import ONLINE_OBJECTIVES, REFERENCE_FREE
from finetune.data.collator import (
    ClassificationCollator,
    MaskedLMCollator,
    Seq2SeqCollator,
    build_collator,
)
from finetune.errors import ConfigError
from finetune.train.divergence import GuardedTrainer

if TYPE_CHECKING:
    from finetune.config.schema import RunConfig


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


TASK_OBJECTIVES: dict[str, Objective] = {
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
    """The `sft` objective of a model built for `task`: its head's own loss."""
    return TASK_OBJECTIVES[task]


def arguments_class(cfg: RunConfig) -> tuple[type[TrainingArguments], dict[str, Any]]:
    """The TrainingArguments class of the run's objective, and the objective's options in
    it. TRL's configs change some of TrainingArguments' defaults (bf16, gradient
    checkpointing, dropout): every one of those is set from the run config instead."""
    objective = cfg.objective
    if objective.type == "dpo":
        from trl import DPOConfig

        return DPOConfig, {
            "beta": objective.beta,
            "loss_type": list(objective.loss_type),
            "loss_weights": objective.loss_weights,
            "label_smoothing": objective.label_smoothing,
            "precompute_ref_log_probs": objective.reference == "precomputed",
            # Pairs arrive truncated by the data layer (finetune.data.pipeline.truncate_pair)
            "max_length": None,
            "disable_dropout": False,  # method.dropout (and the model's) mean what they say
        }
    if objective.type == "kto":
        from trl import KTOConfig

        return KTOConfig, {
            "beta": objective.beta,
            "loss_type": objective.loss_type,
            "desirable_weight": objective.desirable_weight,
            "undesirable_weight": objective.undesirable_weight,
            "precompute_ref_log_probs": objective.reference == "precomputed",
            "max_length": None,  # truncated by the data layer
            "disable_dropout": False,
            # The KL term pairs each answer with its micro-batch neighbours' prompts, fixed
            # when the data is prepared; the data layer shuffled the rows once already
            "train_sampling_strategy": "sequential",
        }
    if objective.type in REFERENCE_FREE:
        # TRL warns that trl.experimental may change: the project pins trl's minor
        # version and its tests run these trainers
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if objective.type in ("cpo", "simpo"):
        from trl.experimental.cpo import CPOConfig

        simpo = objective.type == "simpo"
        return CPOConfig, {
            "beta": objective.beta,
            "loss_type": "simpo" if simpo else objective.loss_type,
            "cpo_alpha": objective.cpo_alpha,
            "simpo_gamma": objective.simpo_gamma if simpo else 0.5,
            "label_smoothing": 0.0 if simpo else objective.label_smoothing,
            "max_length": cfg.data.max_length,  # the data layer truncated the pairs to it
            "disable_dropout": False,
        }
    if objective.type == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig, {
            "beta": objective.beta,
            "max_length": cfg.data.max_length,
            "disable_dropout": False,
        }
    if objective.type in ONLINE_OBJECTIVES:
        options = {
            "num_generations": objective.num_generations,
            "num_generations_eval": objective.num_generations,
            "max_completion_length": objective.max_completion_length,
            "temperature": objective.temperature,
            "top_p": objective.top_p,
            "top_k": objective.top_k,
            "beta": objective.beta,
            "num_iterations": objective.num_iterations,
            "epsilon": objective.epsilon,
            "reward_weights": [r.weight for r in objective.rewards],
            "disable_dropout": False,
            # The trainer counts the prompt and completion tokens itself; its batches have
            # no input_ids for the Trainer to count
            "include_num_input_tokens_seen": "no",
        }
        if objective.type == "grpo":
            from trl import GRPOConfig

            options |= {"loss_type": objective.loss_type, "scale_rewards": objective.scale_rewards}
            return GRPOConfig, options
        from trl import RLOOConfig

        return RLOOConfig, options | {"normalize_advantages": objective.normalize_advantages}
    if objective.type == "distill":
        from trl import DistillationConfig

        return DistillationConfig, {
            "beta": objective.beta,
            "max_completion_length": objective.max_completion_length,
            "temperature": objective.temperature,
            "top_p": objective.top_p,
            "top_k": objective.top_k,
            "disable_dropout": False,
            "include_num_input_tokens_seen": "no",  # batches hold prompts, not input_ids
        }
    if objective.type == "reward":
        from trl import RewardConfig

        return RewardConfig, {
            "center_rewards_coefficient": objective.center_rewards_coefficient,
            "max_length": None,
            "disable_dropout": False,
        }
    return TrainingArguments, {}


def head_labels(cfg: RunConfig) -> list[str] | None:
    """Names of the outputs of a classification head the run adds, if it adds one: the
    classes of classification data, or the one score of a reward model."""
    if cfg.objective.type == "reward":
        return ["reward"]
    return getattr(cfg.data.train[0].format, "labels", None)


def build_trainer(
    cfg: RunConfig,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Any,
    eval_dataset: Any,
    callbacks: list[TrainerCallback],
    optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None,
    reference: Callable[[], PreTrainedModel],
) -> Trainer:
    """The trainer of the run's objective.

    Args:
        reference: builds a fresh copy of the starting model, for an objective that needs a
            frozen reference model (DPO with full training).
    """
    common = {
        "model": model,
        "args": args,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "processing_class": tokenizer,
        "callbacks": callbacks,
    }
    objective = cfg.objective
    if objective.type in ("dpo", "kto", *REFERENCE_FREE):
        from finetune.train.trl_trainers import PAIR_TRAINERS

        if objective.type == "kto":
            from finetune.data.pipeline import unpaired

            # Preference pairs become a desirable and an undesirable answer each
            common["train_dataset"] = unpaired(train_dataset, cfg.train.seed)
            common["eval_dataset"] = unpaired(eval_dataset, cfg.train.seed + 1)
        if objective.type in ("dpo", "kto"):
            # With an adapter the reference is the base with adapters disabled: no copy
            needs_copy = objective.reference == "model" and cfg.method.type == "full"
            common["ref_model"] = reference() if needs_copy else None
        trainer = PAIR_TRAINERS[objective.type](**common)
        # These trainers take no optimizer class; the Trainer reads it when it builds one
        trainer.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        return trainer
    if objective.type in ONLINE_OBJECTIVES:
        from finetune.train.rewards import reward_functions
        from finetune.train.trl_trainers import ONLINE_TRAINERS

        _check_reward_fields(objective.rewards, train_dataset)
        functions, _ = reward_functions(objective.rewards)  # their weights: in `args`
        trainer = ONLINE_TRAINERS[objective.type](reward_funcs=functions, **common)
        trainer.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        return trainer
    if objective.type == "distill":
        from finetune.train.trl_trainers import DistillationRunTrainer

        trainer = DistillationRunTrainer(teacher_model=load_teacher(objective, tokenizer), **common)
        trainer.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        return trainer
    if objective.type == "reward":
        from finetune.train.trl_trainers import RewardModelTrainer, WholeSequences

        if model.config.pad_token_id is None:  # the head reads the last token before padding
            model.config.pad_token_id = tokenizer.pad_token_id
        return RewardModelTrainer(
            data_collator=WholeSequences(tokenizer.pad_token_id),
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            **common,
        )
    task = objective_of(cfg.model.task)
    return task.trainer(
        data_collator=task.collator(cfg.data, tokenizer, cfg.train.seed),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        compute_metrics=task.metrics,
        **common,
    )


def load_teacher(objective: Any, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The distillation teacher, frozen, once its tokenizer is checked against the run's.

    Raises:
        ConfigError: the teacher's tokenizer is not the run's.
    """
    from finetune.evaluate import load_trained

    teacher, teacher_tokenizer = load_trained(
        objective.teacher, objective.teacher_trust_remote_code, "causal_lm"
    )
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"objective.teacher: {objective.teacher} has another tokenizer than the run "
            f"({len(teacher_tokenizer)} tokens against {len(tokenizer)}, or the same count "
            "numbered differently); distillation compares next-token distributions token by "
            f"token, so the student needs the teacher's: set tokenizer.name_or_path: "
            f"{objective.teacher}"
        )
    return teacher.requires_grad_(False).eval()


def _check_reward_fields(rewards: list[Any], rows: Any) -> None:
    """Refuse an exact_match reward whose reference field the prompt rows lack (checked on
    the first row, before any completion is sampled)."""
    fields = json.loads(rows[0]["extras"])
    for i, reward in enumerate(rewards):
        if reward.type == "exact_match" and reward.column not in fields:
            names = ", ".join(fields) or "none"
            raise ConfigError(
                f"objective.rewards[{i}].column: the prompt rows have no field "
                f"{reward.column!r} to compare answers with (fields besides the prompt: "
                f"{names})"
            )
