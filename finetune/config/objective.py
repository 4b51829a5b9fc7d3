"""The objective section: what a run optimises, apart from how its weights train (`method`).

Each objective is one class, chosen by `objective.type`; its fields exist only when it is
chosen, so an option of another objective (or a typo) fails with its path. The objectives
beyond `sft` are TRL's trainers; their options keep TRL's names and meanings.
"""

from __future__ import annotations

import re
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


# --------------------------------------------------------------------------------------
# online objectives: the model writes answers to prompts and learns from their rewards
# --------------------------------------------------------------------------------------

FUNCTION_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ExactMatchReward(Section):
    """`exact_match`: 1.0 when the completion's final answer equals the reference answer in
    a column of the prompt rows, else 0.0 (both stripped of surrounding whitespace)."""

    type: Literal["exact_match"] = "exact_match"

    column: str = "answer"
    """Field of the prompt rows holding the reference answer."""

    extract: str | None = None
    """A regular expression whose first group is the final answer within the completion
    (its last match counts), e.g. `"####\\s*(\\S+)"`; unset: the whole completion. A
    completion without a match gets 0.0."""

    weight: float = 1.0
    """This reward's weight in the sum of the rewards."""

    @field_validator("extract")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is not None and _compiled(value).groups < 1:
            raise ValueError("needs a group around the answer, e.g. '####\\s*(\\S+)'")
        return value


class RegexReward(Section):
    """`regex`: 1.0 when the completion matches a regular expression (a format reward),
    else 0.0."""

    type: Literal["regex"] = "regex"

    pattern: str
    """The regular expression."""

    match: Literal["full", "search"] = "full"
    """`full`: the whole completion (stripped) must match; `search`: a match anywhere."""

    weight: float = 1.0
    """This reward's weight in the sum of the rewards."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _compiled(value)
        return value


class LengthReward(Section):
    """`length`: a length penalty, 0.0 for a completion of up to `max_tokens` tokens and
    `-penalty` for each token beyond."""

    type: Literal["length"] = "length"

    max_tokens: int = Field(ge=1)
    """Completions up to this many tokens go unpenalised."""

    penalty: float = Field(0.1, gt=0)
    """Reward lost per token beyond `max_tokens`."""

    weight: float = 1.0
    """This reward's weight in the sum of the rewards."""


class FunctionReward(Section):
    """`function`: a reward function of your own, given as `module:function` (the module
    must be importable: installed, or on PYTHONPATH, or next to where the run starts). It
    is called as TRL calls reward functions, with keyword arguments: `prompts` (the prompts
    as the data gives them: strings, or lists of chat turns), `completions` (strings, or
    one assistant turn each for chat prompts), `completion_ids`, every other field of the
    prompt rows (one value per completion), and `trainer_state`; it returns one float per
    completion (None: no reward from this function for that completion)."""

    type: Literal["function"] = "function"

    function: str
    """`module:function`, e.g. `my_rewards:brevity`."""

    weight: float = 1.0
    """This reward's weight in the sum of the rewards."""

    @field_validator("function")
    @classmethod
    def _module_and_name(cls, value: str) -> str:
        if not FUNCTION_PATH.match(value):
            raise ValueError(
                f"{value!r} is not module:function (e.g. my_rewards:brevity, or "
                "package.module:score)"
            )
        return value


RewardConfig = Annotated[
    ExactMatchReward | RegexReward | LengthReward | FunctionReward,
    Field(discriminator="type"),
]


def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {err}") from None


class OnlineObjective(Section):
    """What GRPO and RLOO share: each prompt gets a group of sampled completions, scored
    by the reward functions; a completion is reinforced by how far its reward stands above
    the others' of its group."""

    rewards: list[RewardConfig] = Field(default_factory=list)
    """The reward functions, summed with their weights: `exact_match`, `regex`, `length`
    and `function` (your own, as module:function). At least one."""

    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt (the group). `train.micro_batch_size` x
    `train.gradient_accumulation_steps` must be a multiple of it."""

    max_completion_length: int = Field(32, ge=1)
    """Longest completion sampled, in tokens."""

    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the completions."""

    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    it (1.0: every token)."""

    top_k: int = Field(0, ge=0)
    """Sample from the k likeliest tokens only (0: no limit)."""

    beta: float = Field(0.0, ge=0)
    """Weight of the KL penalty that keeps the model near the reference (the model as
    training starts: with LoRA and QLoRA the base with the adapter disabled, with full
    training a copy loaded from model.name_or_path). 0: no penalty and no reference."""

    num_iterations: int = Field(1, ge=1)
    """Optimisation passes over each batch of sampled completions."""

    epsilon: float = Field(0.2, gt=0)
    """Clipping range of the policy ratio."""

    @model_validator(mode="after")
    def _has_rewards(self) -> OnlineObjective:
        if not self.rewards:
            raise ValueError(
                f"{self.type} needs at least one reward function in objective.rewards, e.g. "
                "rewards: [{type: exact_match, column: answer}]"
            )
        return self


class GrpoObjective(OnlineObjective):
    """`grpo`: Group Relative Policy Optimization (TRL's GRPOTrainer) on `prompt` data: the
    rewards of each group are normalised by the group's mean (and spread), and the model
    follows those advantages within a clipped ratio of its sampling policy."""

    type: Literal["grpo"] = "grpo"

    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    """How token losses are averaged: `dapo` (over the tokens of the whole batch, TRL's
    default), `grpo` (per completion first, which favours short right answers),
    `dr_grpo` (by a constant, max_completion_length) or `bnpo` (over each micro-batch)."""

    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide the advantages by the standard deviation of the group's rewards, of the
    batch's, or not at all (Dr. GRPO)."""


class RlooObjective(OnlineObjective):
    """`rloo`: REINFORCE Leave-One-Out (TRL's RLOOTrainer) on `prompt` data: each
    completion's baseline is the mean reward of the other completions of its prompt."""

    type: Literal["rloo"] = "rloo"

    normalize_advantages: bool = False
    """Scale the advantages to unit variance across the batch."""


class DistillObjective(Section):
    """`distill`: on-policy distillation (TRL's DistillationTrainer) on `prompt` data: the
    model samples answers to the prompts, and at every token of them learns the teacher's
    next-token distribution (a generalised Jensen-Shannon divergence). The teacher is any
    causal language model with the run's tokenizer; the rows need no answers."""

    type: Literal["distill"] = "distill"

    teacher: str
    """The teacher: a model directory (a finetune run's output, adapter included) or a Hub
    id. Its tokenizer must be the run's (`tokenizer.name_or_path` set to the teacher, or
    the same tokenizer), since the distributions are compared token by token."""

    teacher_trust_remote_code: bool = False
    """Run the teacher checkpoint's own modelling code (as `model.trust_remote_code`)."""

    beta: float = Field(1.0, ge=0, le=1)
    """Which divergence: 0 the forward KL (the teacher's distribution covered, as in
    classic distillation), 1 the reverse KL (the student's own answers sharpened toward
    the teacher's, TRL's default), values between a generalised Jensen-Shannon
    divergence (0.5: the symmetric JSD)."""

    max_completion_length: int = Field(32, ge=1)
    """Longest answer sampled, in tokens."""

    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the answers (and of both distributions in the loss)."""

    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling of the answers (1.0: every token)."""

    top_k: int = Field(0, ge=0)
    """Sample the answers from the k likeliest tokens only (0: no limit)."""

    answer_column: str | None = None
    """Field of the prompt rows holding a reference answer, for the greedy exact match of
    `train.exact_match_rows` (distillation itself reads none)."""


ObjectiveConfig = Annotated[
    SftObjective
    | DpoObjective
    | KtoObjective
    | CpoObjective
    | SimpoObjective
    | OrpoObjective
    | RewardObjective
    | GrpoObjective
    | RlooObjective
    | DistillObjective,
    Field(discriminator="type"),
]

REFERENCE_FREE = ("cpo", "simpo", "orpo")
"""Preference objectives that compare the model with no reference model (TRL's
experimental CPOTrainer and ORPOTrainer)."""

ONLINE_OBJECTIVES = ("grpo", "rloo")
"""Objectives that sample answers to `prompt` data while training and learn from their
rewards (TRL's GRPOTrainer and RLOOTrainer)."""

PROMPT_OBJECTIVES = (*ONLINE_OBJECTIVES, "distill")
"""Objectives that train on `prompt` data, sampling answers while they train."""

PREFERENCE_OBJECTIVES = ("dpo", "reward", "kto", *REFERENCE_FREE)
"""Objectives that train on `preference` data (prompt, chosen and rejected answers)."""

OBJECTIVE_FORMATS = {
    "sft": ("text", "completion", "alpaca", "chat", "classification"),
    "dpo": ("preference",),
    "reward": ("preference",),
    "kto": ("feedback", "preference"),
    **{kind: ("preference",) for kind in REFERENCE_FREE},
    **{kind: ("prompt",) for kind in PROMPT_OBJECTIVES},
}
"""The data formats each objective trains on."""
