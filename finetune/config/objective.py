"""The objective section: what a run optimises, apart from how its weights train (`method`).

Each objective is one class, chosen by `objective.type`; its fields exist only when it is
chosen, so an option of another objective (or a typo) fails with its path. The objectives
beyond `sft` are TRL's trainers; their options keep TRL's names and meanings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from finetune.config.base import Section

DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
"""The loss variants of TRL's DPOTrainer (DPOConfig.loss_type)."""

DpoLoss = Literal[DPO_LOSSES]  # type: ignore[valid-type]


class SftObjective(Section):
    """`sft`: the loss of the model's own head (`model.task`): next-token prediction on the
    answer tokens for `causal_lm` (supervised fine-tuning), masked tokens for `masked_lm`,
    target tokens for `seq2seq`, the class for `sequence_classification`."""

    type: Literal["sft"] = "sft"


class DpoObjective(Section):
    """`dpo`: Direct Preference Optimization and its variants (TRL's DPOTrainer) on
    `preference` data. The model learns to give its chosen answers a higher likelihood
    than its rejected ones, relative to a reference model (the model as training starts)."""

    type: Literal["dpo"] = "dpo"

    beta: float = Field(0.1, gt=0)
    """How far the model may move from the reference: a higher beta keeps it closer. For
    `ipo` it is the regularisation strength tau."""

    loss_type: list[DpoLoss] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    """The DPO loss, or several combined with `loss_weights`: `sigmoid` (DPO), `hinge`
    (SLiC), `ipo`, `robust`, `exo_pair`, `nca_pair`, `bco_pair`, `sppo_hard`, `aot`,
    `aot_unpaired`, `apo_zero`, `apo_down`, `discopop`, `sigmoid_norm`, and `sft` (the
    negative log-likelihood of the chosen answer, as in RPO when combined). A single name
    may be given as a string."""

    loss_weights: list[float] | None = None
    """Weight of each `loss_type` (all 1.0 when unset)."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Probability that a preference label is flipped (`robust`), or EXO's epsilon
    (`exo_pair`, which needs it above 0; 1e-3 is the paper's value)."""

    reference: Literal["model", "precomputed"] = "model"
    """Where the reference log-probabilities come from. `model`: with LoRA and QLoRA the
    model with its adapter disabled (no second copy), with full training a frozen copy of
    the starting model. `precomputed`: one pass over the data before training computes
    them, so no reference model stays in memory while training."""

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_name(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _weights_match(self) -> DpoObjective:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} value(s) for "
                f"{len(self.loss_type)} loss_type(s); give one weight per loss"
            )
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ValueError("loss_type exo_pair needs label_smoothing above 0 (e.g. 1e-3)")
        return self


class RewardObjective(Section):
    """`reward`: a reward model (TRL's RewardTrainer) on `preference` data. The model gets a
    one-output sequence-classification head whose score of the chosen answer must exceed
    the rejected one's (a Bradley-Terry loss); `model.task` becomes
    `sequence_classification`."""

    type: Literal["reward"] = "reward"

    center_rewards_coefficient: float | None = Field(None, ge=0)
    """Weight of a penalty on the squared mean reward, which keeps rewards centred on 0
    (0.01 is the value its paper recommends); unset: no penalty."""


class KtoObjective(Section):
    """`kto`: Kahneman-Tversky Optimization (TRL's KTOTrainer) on `feedback` data (one
    answer per prompt, labelled desirable or not) or on `preference` data (each pair read
    as a desirable and an undesirable answer). Like DPO it compares the model with a
    reference model, but it needs no pairs."""

    type: Literal["kto"] = "kto"

    beta: float = Field(0.1, gt=0)
    """How far the model may move from the reference: a higher beta keeps it closer."""

    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """`kto` (the KTO paper's loss, which estimates the KL term from mismatched answers in
    each micro-batch, so it needs `train.micro_batch_size` of 2 or more) or
    `apo_zero_unpaired` (APO-zero's unpaired loss, no KL term)."""

    desirable_weight: float = Field(1.0, gt=0)
    """Weight of the desirable answers' loss: raise it when they are the fewer."""

    undesirable_weight: float = Field(1.0, gt=0)
    """Weight of the undesirable answers' loss. The KTO paper suggests weights such that
    desirable_weight x desirable answers / (undesirable_weight x undesirable answers) lies
    between 1 and 4/3."""

    reference: Literal["model", "precomputed"] = "model"
    """Where the reference log-probabilities come from, as for `dpo`."""


class CpoObjective(Section):
    """`cpo`: Contrastive Preference Optimization (TRL's experimental CPOTrainer) on
    `preference` data: a DPO-style loss on the model's own log-probabilities, with no
    reference model, plus the chosen answers' negative log-likelihood (`cpo_alpha`)."""

    type: Literal["cpo"] = "cpo"

    beta: float = Field(0.1, gt=0)
    """Scale of the log-probability difference inside the loss (`ipo`: its tau)."""

    loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    """The preference loss: `sigmoid` (DPO's, the CPO paper's), `hinge` (SLiC) or `ipo`."""

    cpo_alpha: float = Field(1.0, ge=0)
    """Weight of the chosen answers' negative log-likelihood."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Probability that a preference label is flipped (`sigmoid` only)."""


class SimpoObjective(Section):
    """`simpo`: SimPO (TRL's experimental CPOTrainer with its `simpo` loss) on `preference`
    data: no reference model; each answer's reward is its length-normalised
    log-probability, and the chosen one must lead by a margin."""

    type: Literal["simpo"] = "simpo"

    beta: float = Field(2.0, gt=0)
    """Scale of the length-normalised rewards (the SimPO paper uses 2.0 to 2.5)."""

    simpo_gamma: float = Field(0.5, ge=0)
    """The reward margin the chosen answer must lead by."""

    cpo_alpha: float = Field(0.0, ge=0)
    """Weight of a negative log-likelihood term on the chosen answers (0: plain SimPO;
    above 0: CPO-SimPO)."""


class OrpoObjective(Section):
    """`orpo`: Odds Ratio Preference Optimization (TRL's experimental ORPOTrainer) on
    `preference` data: supervised fine-tuning on the chosen answers plus a penalty on the
    odds of the rejected ones, with no reference model, so it can start from a base model
    that was never fine-tuned."""

    type: Literal["orpo"] = "orpo"

    beta: float = Field(0.1, gt=0)
    """Weight of the odds-ratio term beside the chosen answers' loss (the paper's lambda)."""


ObjectiveConfig = Annotated[
    SftObjective
    | DpoObjective
    | KtoObjective
    | CpoObjective
    | SimpoObjective
    | OrpoObjective
    | RewardObjective,
    Field(discriminator="type"),
]

REFERENCE_FREE = ("cpo", "simpo", "orpo")
"""Preference objectives that compare the model with no reference model (TRL's
experimental CPOTrainer and ORPOTrainer)."""

PREFERENCE_OBJECTIVES = ("dpo", "reward", "kto", *REFERENCE_FREE)
"""Objectives that train on `preference` data (prompt, chosen and rejected answers)."""

OBJECTIVE_FORMATS = {
    "sft": ("text", "completion", "alpaca", "chat", "classification"),
    "dpo": ("preference",),
    "reward": ("preference",),
    "kto": ("feedback", "preference"),
    **{kind: ("preference",) for kind in REFERENCE_FREE},
}
"""The data formats each objective trains on."""
