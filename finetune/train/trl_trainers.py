"""TRL's trainers as the project runs them: on the data layer's tokenized rows, with the
divergence checks of every run (`Guarded`). Imported only by runs whose objective needs
TRL (an optional dependency)."""

from __future__ import annotations

import json
from typing import Any

from trl import (
    DistillationTrainer,
    DPOTrainer,
    GRPOTrainer,
    KTOTrainer,
    RewardTrainer,
    RLOOTrainer,
)
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from finetune.data.collator import IGNORE_INDEX
from finetune.train.divergence import Guarded


class EvaluationPrefix:
    """Remembers the prefix `evaluate` was called with while it runs (`_prefix`), for a
    `log` that names TRL's own evaluation metrics with it: TRL writes `eval_` whatever the
    prefix, and an evaluation before training reports `untrained_*` throughout."""

    _prefix = "eval"

    def evaluate(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        self._prefix = metric_key_prefix
        try:
            return super().evaluate(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        finally:
            self._prefix = "eval"


class NamedEvalMetrics(EvaluationPrefix):
    """Mixed into TRL's trainers that collect metrics per mode (`_metrics`): their
    evaluation metrics (rewards/accuracies, ...) get the prefix of the evaluation."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        collected = self._metrics["eval"]  # TRL's running lists, emptied by each log
        if not self.model.training and self._prefix != "eval" and collected:
            logs.update({f"{self._prefix}_{k}": sum(v) / len(v) for k, v in collected.items()})
            collected.clear()
        super().log(logs, start_time)


class ProjectModel:
    """Mixed into TRL's trainers that compare with a reference model (DPO, KTO): two of
    their choices are undone once they are built, both about models the project sets up.
    The copy of a new LoRA adapter that TRL keeps as the reference ("ref") is dropped,
    since a new adapter is zero and the base model with adapters disabled is the same
    reference at no cost (the output then holds one adapter); and the adapter weights of a
    quantized model get back the dtype they had (TRL casts them to bfloat16, which a CPU
    without native bf16 runs about 100x slower than `method.compute_dtype`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
        super().__init__(*args, **kwargs)
        if "ref" in getattr(self.model, "peft_config", {}):
            self.model.delete_adapter("ref")
        for name, param in self.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])


class PreferenceTrainer(NamedEvalMetrics, Guarded, ProjectModel, DPOTrainer):
    """TRL's DPOTrainer on pairs the data layer tokenized, truncated and checked."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        return dataset  # already prompt_ids / chosen_ids / rejected_ids (finetune.data)


class FeedbackTrainer(NamedEvalMetrics, Guarded, ProjectModel, KTOTrainer):
    """TRL's KTOTrainer on feedback rows the data layer tokenized, truncated and checked
    (`finetune.data.pipeline.unpaired` turns preference pairs into them)."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        if not self.calculate_KL:
            return dataset
        # KTO's KL term scores each answer after the prompt of its neighbour in the
        # micro-batch: within each block of `per_device_train_batch_size` rows (as TRL
        # builds it), the answers rotate by one
        size = args.per_device_train_batch_size

        def rotate(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
            answers = rows["completion_ids"]
            return {"KL_completion_ids": answers[-1:] + answers[:-1]}

        return dataset.map(rotate, batched=True, batch_size=size, desc=f"KL answers ({name})")


class PretokenizedPairs(EvaluationPrefix):
    """Mixed into TRL's experimental pair trainers (CPO, ORPO), which tokenize text rows as
    they are built: each of the data layer's pairs becomes the columns their collator
    reads instead (prompt, and prompt + answer with the answer's labels), and their
    evaluation metrics (`_stored_metrics`) get the prefix of the evaluation."""

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        prompt = feature["prompt_ids"]
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            answer = feature[f"{side}_ids"]
            row[f"{side}_input_ids"] = prompt + answer
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
        return row

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        stored = self._stored_metrics.get("eval")
        if self._prefix != "eval" and stored:
            renamed = {f"{self._prefix}_{k.removeprefix('eval_')}": v for k, v in stored.items()}
            stored.clear()
            stored.update(renamed)
        super().log(logs, start_time)


class ContrastiveTrainer(PretokenizedPairs, Guarded, CPOTrainer):
    """TRL's experimental CPOTrainer (CPO and SimPO) on the data layer's pairs."""


class OddsRatioTrainer(PretokenizedPairs, Guarded, ORPOTrainer):
    """TRL's experimental ORPOTrainer on the data layer's pairs."""


PAIR_TRAINERS: dict[str, type] = {
    "dpo": PreferenceTrainer,
    "kto": FeedbackTrainer,
    "cpo": ContrastiveTrainer,
    "simpo": ContrastiveTrainer,
    "orpo": OddsRatioTrainer,
}
"""The trainer of each objective that reads the data layer's pairs (or feedback rows)."""


class RewardModelTrainer(NamedEvalMetrics, Guarded, RewardTrainer):
    """TRL's RewardTrainer; it takes the data layer's chosen_ids / rejected_ids as they are."""


class WholeSequences:
    """RewardTrainer's collator, given each answer as the whole sequence it scores (the
    data layer keeps the prompt apart: prompt + chosen, prompt + rejected)."""

    def __init__(self, pad_token_id: int) -> None:
        self.collate = DataCollatorForPreference(pad_token_id=pad_token_id)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(
            [
                {
                    "chosen_ids": e["prompt_ids"] + e["chosen_ids"],
                    "rejected_ids": e["prompt_ids"] + e["rejected_ids"],
                }
                for e in examples
            ]
        )


class PromptRows:
    """Mixed into TRL's trainers that sample completions of the data layer's prompt rows
    (GRPO, RLOO, distillation): generation starts from the ids the data layer made (its
    chat template, truncation and special tokens), and the rewards get the prompt as the
    data gives it and the row's other fields (`finetune.train.rewards.checked` reads them)."""

    _prompt_ids: tuple[list[int], ...] = ()

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._prompt_ids = tuple(list(row["prompt_ids"]) for row in inputs)
        rows = [{"prompt": json.loads(row["prompt"]), "extras": row["extras"]} for row in inputs]
        return super()._generate_and_score_completions(rows)

    def _tokenize_prompts(self, prompts: list[Any]) -> tuple[list[list[int]], None, dict]:
        return list(self._prompt_ids), None, {}


class GroupRelativeTrainer(PromptRows, NamedEvalMetrics, Guarded, ProjectModel, GRPOTrainer):
    """TRL's GRPOTrainer on the data layer's prompt rows."""


class LeaveOneOutTrainer(PromptRows, NamedEvalMetrics, Guarded, ProjectModel, RLOOTrainer):
    """TRL's RLOOTrainer on the data layer's prompt rows."""


ONLINE_TRAINERS: dict[str, type] = {"grpo": GroupRelativeTrainer, "rloo": LeaveOneOutTrainer}
"""The trainer of each objective that samples completions of prompt rows."""


class DistillationRunTrainer(PromptRows, NamedEvalMetrics, Guarded, DistillationTrainer):
    """TRL's DistillationTrainer on the data layer's prompt rows: the student samples
    answers from the ids the data layer made, and learns the teacher's distributions."""
