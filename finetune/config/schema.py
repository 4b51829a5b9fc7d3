"""The run schema: one typed, documented section per concern.

Every section forbids unknown keys, so a typo fails with its full path instead of being
ignored. Field docstrings are the documentation: `finetune config schema` prints them.
Architecture hyperparameters are not copied here: `model.config` passes them through to the
Hugging Face config class, and is checked against that class's fields.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from finetune.config.base import Section
from finetune.config.data import DataConfig, TokenizerConfig
from finetune.config.hub import HubConfig
from finetune.config.objective import (
    OBJECTIVE_FORMATS,
    ONLINE_OBJECTIVES,
    ObjectiveConfig,
    SftObjective,
)

# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------


def hf_config_class(model_type: str) -> type:
    """The transformers config class registered for `model_type`.

    Raises:
        ValueError: `model_type` is not registered; the message lists close names.
    """
    from transformers import CONFIG_MAPPING

    import finetune.models  # noqa: F401  (registers the project's architectures)

    if model_type not in CONFIG_MAPPING:
        known = sorted(CONFIG_MAPPING.keys())
        close = difflib.get_close_matches(model_type, known, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown architecture {model_type!r}; use a registered model_type "
            f"such as 'llama' or 'decoder'. {hint}".strip()
        )
    return CONFIG_MAPPING[model_type]


def unknown_config_keys(config_class: type, keys: list[str]) -> list[str]:
    """Error messages for `keys` that `config_class` does not declare as fields.

    transformers stores unknown config kwargs as attributes without complaint, so a typo
    such as `hidden_sise` would silently build the default model; this catches it.
    """
    if not dataclasses.is_dataclass(config_class):
        return []
    fields = {f.name for f in dataclasses.fields(config_class)}
    messages = []
    for key in keys:
        if key in fields:
            continue
        close = difflib.get_close_matches(key, sorted(fields), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(sorted(fields))}"
        messages.append(f"unknown field {key!r} for {config_class.__name__}; {hint}")
    return messages


class ModelConfig(Section):
    """Which model to train: a pretrained checkpoint, or an architecture built from scratch."""

    name_or_path: str | None = None
    """A local Hugging Face checkpoint directory (or a Hub id, when the Hub is reachable)."""

    architecture: str | None = None
    """A registered `model_type` to build with random weights from `config`, e.g. `llama`
    or the project's own `decoder`. Exactly one of `name_or_path` and `architecture`."""

    config: dict[str, Any] = Field(default_factory=dict)
    """Fields for the architecture's Hugging Face config class (hidden_size,
    num_hidden_layers, ...). With `name_or_path` they override the checkpoint's config."""

    task: Literal["causal_lm", "masked_lm", "seq2seq", "sequence_classification"] = "causal_lm"
    """What the model learns: `causal_lm` (next token; decoder models such as `llama` or
    `decoder`), `masked_lm` (15% of tokens masked; encoders such as `encoder` or BERT), or
    `seq2seq` (encoder-decoders such as `seq2seq` or BART: the prompt of each
    completion/alpaca/chat row is the source, its answer the target), or
    `sequence_classification` (a head on an encoder or decoder; `classification` rows)."""

    trust_remote_code: bool = False
    """Allow a checkpoint's own modeling code to run (needed for custom Hub architectures)."""

    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    """Attention kernel; None lets transformers choose (sdpa where supported)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.name_or_path is None) == (self.architecture is None):
            raise ValueError(
                "set exactly one of model.name_or_path (a checkpoint to start from) "
                "and model.architecture (a model_type to build from scratch)"
            )
        if self.architecture is not None:
            errors = unknown_config_keys(hf_config_class(self.architecture), list(self.config))
            if errors:
                raise ValueError("model.config: " + "; ".join(errors))
        return self


# --------------------------------------------------------------------------------------
# method
# --------------------------------------------------------------------------------------


class FullMethod(Section):
    """Full fine-tuning: every parameter trains."""

    type: Literal["full"] = "full"


class LoraMethod(Section):
    """LoRA through peft: the base model is frozen, low-rank adapters train."""

    type: Literal["lora"] = "lora"

    rank: int = Field(16, ge=1)
    """Rank r of the update matrices."""

    alpha: float = Field(32.0, gt=0)
    """Scaling numerator: updates are scaled by alpha / rank (alpha / sqrt(rank) with rsLoRA)."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""

    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or `all-linear` for every linear layer but the output head."""

    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. a new classification head)."""

    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(rank)."""

    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""

    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train."""


class QLoraMethod(LoraMethod):
    """QLoRA: LoRA adapters on a base model quantized by bitsandbytes (4-bit, or 8-bit)."""

    type: Literal["qlora"] = "qlora"  # type: ignore[assignment]

    bits: Literal[4, 8] = 4
    """Storage precision of the frozen base weights."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: NormalFloat4 (QLoRA's) or plain FP4."""

    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bits per parameter)."""

    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the 4-bit weights are dequantized to for each matmul."""


MethodConfig = Annotated[FullMethod | LoraMethod | QLoraMethod, Field(discriminator="type")]


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------


class TrainConfig(Section):
    """The optimisation loop."""

    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (ignored when `max_steps` is set)."""

    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""

    micro_batch_size: int = Field(8, ge=1)
    """Samples per device per forward pass."""

    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""

    lr: float = Field(5e-5, gt=0)
    """Peak learning rate."""

    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "lamb"] = "adamw"
    """`adamw` (torch), `adamw_8bit`, `paged_adamw` and `paged_adamw_8bit` (bitsandbytes),
    `lamb` (bitsandbytes' LAMB; full training only). Under ZeRO offload use `adamw`:
    DeepSpeed swaps it for its CPU Adam; the bitsandbytes optimizers are not offloaded."""

    adam_beta1: float = Field(0.9, gt=0, lt=1)
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)

    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (not applied to biases and norms)."""

    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Decay after warm-up."""

    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps from 0 to `lr`."""

    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; None disables clipping."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute precision. Checked against the hardware at preflight."""

    allow_slow_precision: bool = False
    """Run a precision the processor has no native support for (bf16 on most CPUs is
    about 100x slower than fp32) instead of refusing it at preflight."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    seed: int = 42
    """Seed for weights, data order and dropout."""

    eval_steps: int | None = Field(None, ge=1)
    """Evaluate every N steps (and at the end) when evaluation data exists."""

    merge_adapter: bool = False
    """After a LoRA/QLoRA run, also write the adapter merged into its base model (a 4-bit
    base is dequantized first) to `<output.dir>/merged`."""

    eval_untrained: bool = False
    """Also evaluate the model before the first step, to report the gain from training."""

    exact_match_rows: int = Field(0, ge=0)
    """After training (and before it, with `eval_untrained`), greedy-decode the answers of
    the first N rows of the first `data.eval` source (completion, alpaca or chat format)
    and report the fraction that match the reference exactly."""

    exact_match_max_new_tokens: int = Field(32, ge=1)
    """Longest answer generated for `exact_match_rows`."""


# --------------------------------------------------------------------------------------
# distributed
# --------------------------------------------------------------------------------------


Device = Literal["none", "cpu", "nvme"]


class OffloadConfig(Section):
    """ZeRO offload: keep optimizer states (ZeRO-1/2/3) or parameters (ZeRO-3) in CPU
    memory or on NVMe instead of accelerator memory."""

    optimizer: Device = "none"
    """Where optimizer states live: `cpu` (DeepSpeed's CPU Adam runs the step there),
    `nvme` (swapped to `nvme_path`), or `none`."""

    params: Device = "none"
    """Where parameters live between uses (ZeRO-3 only): `cpu`, `nvme` or `none`."""

    nvme_path: str | None = None
    """A directory on a fast local NVMe disk, for `nvme` offload (each rank writes there)."""

    pin_memory: bool = True
    """Page-lock offloaded CPU buffers (faster transfers, more locked host memory)."""

    @model_validator(mode="after")
    def _nvme_path(self) -> OffloadConfig:
        if "nvme" in (self.optimizer, self.params) and not self.nvme_path:
            raise ValueError("distributed.offload: nvme offload needs offload.nvme_path")
        return self


class DistributedConfig(Section):
    """Multi-process training through DeepSpeed: ZeRO data parallel, pipeline parallel
    (`pipeline_stages`) and tensor parallel (`tensor_parallel`). The world size must be
    data x tensor x pipeline; the data-parallel size is what remains."""

    deepspeed: str | None = None
    """Path to a DeepSpeed JSON config (see configs/deepspeed/). Values the framework owns
    (batch sizes, accumulation, clipping, precision, offload, tensor parallel) are filled
    from this schema."""

    zero_stage: Literal[0, 1, 2, 3] | None = None
    """Use the DeepSpeed ZeRO preset for this stage (instead of a `deepspeed` file).
    Unset with `pipeline_stages` or `tensor_parallel` above 1: stage 0."""

    offload: OffloadConfig = Field(default_factory=OffloadConfig)
    """ZeRO offload of optimizer states and parameters (needs DeepSpeed)."""

    pipeline_stages: int = Field(1, ge=1)
    """Split the model's layers into this many pipeline stages (DeepSpeed's
    PipelineEngine). Needs ZeRO stage 0 or 1, no packing, no tensor parallel."""

    tensor_parallel: int = Field(1, ge=1)
    """Shard every linear layer over this many ranks (DeepSpeed AutoTP)."""

    timeout_s: int = Field(1800, ge=10)
    """A rank that makes no progress (no step, evaluation or save) for this long, because
    another rank died or hangs, exits with code 3 and the launcher stops the job. Collectives
    time out a little later, as a backstop before training starts."""

    @model_validator(mode="after")
    def _one_source(self) -> DistributedConfig:
        if self.deepspeed is not None and self.zero_stage is not None:
            raise ValueError("set at most one of distributed.deepspeed and distributed.zero_stage")
        offloaded = (self.offload.optimizer, self.offload.params) != ("none", "none")
        if offloaded and not self.enabled:
            raise ValueError(
                "distributed.offload needs DeepSpeed ZeRO: set distributed.zero_stage "
                "(params offload: 3) or distributed.deepspeed"
            )
        if self.offload.params != "none" and self.zero_stage not in (3, None):
            raise ValueError(
                f"distributed.offload.params: parameters are offloaded by ZeRO-3 only, "
                f"not zero_stage {self.zero_stage}; set zero_stage=3 or offload.params=none"
            )
        if self.offload.optimizer != "none" and self.zero_stage == 0:
            raise ValueError(
                "distributed.offload.optimizer: ZeRO stage 0 does not offload; "
                "use zero_stage 1, 2 or 3"
            )
        if self.pipeline_stages > 1 and self.tensor_parallel > 1:
            raise ValueError(
                "distributed: pipeline_stages and tensor_parallel cannot be combined "
                "(DeepSpeed's PipelineModule with AutoTP aborts); use one of them"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether this run uses DeepSpeed."""
        return (
            self.deepspeed is not None
            or self.zero_stage is not None
            or self.pipeline_stages > 1
            or self.tensor_parallel > 1
        )


# --------------------------------------------------------------------------------------
# logging and output
# --------------------------------------------------------------------------------------


class LoggingConfig(Section):
    """Metrics and progress."""

    steps: int = Field(10, ge=1)
    """Log the training loss every N optimizer steps."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] | None = None
    """Experiment trackers. None: TensorBoard when it is installed. [] reports to none.
    metrics.jsonl in the output directory is always written."""


class OutputConfig(Section):
    """Where the run writes its checkpoints and final model."""

    dir: str
    """Output directory. An existing one is refused unless --overwrite or --resume."""

    save_steps: int | None = Field(None, ge=1)
    """Write a checkpoint every N optimizer steps."""

    save_total_limit: int | None = Field(None, ge=1)
    """Keep at most this many checkpoints (the oldest are deleted, only once a newer one is
    complete)."""

    checkpoint_checksums: bool = True
    """Record the SHA-256 of every checkpoint file, and check them before --resume takes a
    checkpoint (a damaged one is skipped for the one before it). Sizes are always checked;
    turn this off only for checkpoints too large to read back at every resume."""

    stop_grace_s: float = Field(25.0, gt=0)
    """On SIGTERM or SIGINT the run finishes its step, saves a checkpoint and exits; if that
    takes longer than this, it exits at once (the deepspeed launcher and most schedulers
    send SIGKILL 30 s after SIGTERM). A second SIGINT exits at once."""


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


FORMAT_FIELDS = {
    "preference": "prompt, chosen and rejected fields",
    "feedback": "prompt, completion and label fields",
    "prompt": "a prompt field, and the fields the rewards read",
}


class RunConfig(Section):
    """A complete fine-tuning run."""

    model: ModelConfig
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig
    method: MethodConfig = Field(default_factory=FullMethod)
    objective: ObjectiveConfig = Field(default_factory=SftObjective)
    """What the run optimises: `sft` (the model head's own loss), `dpo` or `reward`, as a
    name (`objective: dpo`) or a mapping with `type` and the objective's options."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    output: OutputConfig

    @model_validator(mode="after")
    def _quantized_base(self) -> RunConfig:
        if self.method.type == "qlora" and self.model.name_or_path is None:
            raise ValueError(
                "method.type: qlora quantizes pretrained weights; set model.name_or_path to "
                "a checkpoint (or use method.type=lora for a model built from scratch)"
            )
        if self.train.merge_adapter and self.method.type == "full":
            raise ValueError("train.merge_adapter: only LoRA and QLoRA runs have an adapter")
        if self.train.optimizer == "lamb" and self.method.type != "full":
            # bitsandbytes' LAMB caps each step at the weight's norm: a LoRA B matrix starts
            # at zero, so it (and through it the whole adapter) would never move
            raise ValueError(
                f"train.optimizer: lamb scales each update by the weight's norm, and a "
                f"{self.method.type} adapter's B matrices start at zero, so the adapter "
                f"would never train; use adamw (or adamw_8bit) with method.type "
                f"{self.method.type}"
            )
        return self

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_name(cls, value: Any) -> Any:
        # `objective: dpo` is shorthand for `objective: {type: dpo}`.
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _objective_fits(self) -> RunConfig:
        kind = self.objective.type
        sources = [
            *(("data.train", i, s) for i, s in enumerate(self.data.train)),
            *(("data.eval", i, s) for i, s in enumerate(self.data.eval)),
        ]
        for section, i, source in sources:
            fmt = source.format.type
            if fmt in OBJECTIVE_FORMATS[kind]:
                continue
            if kind == "sft":
                trained_by = [k for k, formats in OBJECTIVE_FORMATS.items() if fmt in formats]
                raise ValueError(
                    f"{section}[{i}] ({source.path}): the {fmt} format is the data of "
                    f"objective.type {' or '.join(trained_by)}; set objective.type to one of them"
                )
            raise ValueError(
                f"objective.type: {kind} trains on {' or '.join(OBJECTIVE_FORMATS[kind])} "
                f"data, but {section}[{i}] ({source.path}) has format {fmt!r}; use "
                + " or ".join(f"format: {f} ({FORMAT_FIELDS[f]})" for f in OBJECTIVE_FORMATS[kind])
            )
        if kind == "sft":
            return self
        for section in ("train", "eval"):
            formats = {s.format.type for s in getattr(self.data, section)}
            if len(formats) > 1:
                raise ValueError(
                    f"data.{section}: the sources mix the formats {sorted(formats)}; give every "
                    f"{section} source of a {kind} run the same format"
                )
        if self.data.packing:
            raise ValueError(
                f"data.packing: the {kind} objective scores whole answers, which are not "
                "packed; set data.packing=false"
            )
        if self.distributed.pipeline_stages > 1 or self.distributed.tensor_parallel > 1:
            raise ValueError(
                f"objective.type: {kind} runs through TRL's trainer, which has no pipeline- "
                "or tensor-parallel engine; use data parallelism with ZeRO "
                "(distributed.zero_stage) instead of distributed.pipeline_stages / "
                "tensor_parallel"
            )
        if kind != "reward" and self.model.task != "causal_lm":
            raise ValueError(
                f"objective.type: {kind} trains a language model (model.task: causal_lm), "
                f"not {self.model.task}"
            )
        if kind == "kto":
            if self.objective.loss_type == "kto" and self.train.micro_batch_size < 2:
                raise ValueError(
                    "train.micro_batch_size: the kto loss estimates its KL term from the other "
                    "answers of each micro-batch, so it needs 2 or more (or use "
                    "objective.loss_type=apo_zero_unpaired)"
                )
            held_out = [s.format.type for s in self.data.eval]
            if self.train.exact_match_rows and held_out[:1] == ["feedback"]:
                raise ValueError(
                    "train.exact_match_rows: feedback rows have no reference answer (an "
                    "undesirable one is not); give preference data as data.eval, or set 0"
                )
        if kind in ONLINE_OBJECTIVES:
            self._online_fits()
        if kind == "distill":
            self._distill_fits()
        if kind == "reward":
            if "task" in self.model.model_fields_set and self.model.task != (
                "sequence_classification"
            ):
                raise ValueError(
                    "objective.type: reward scores answers with a sequence-classification "
                    f"head; model.task must be sequence_classification (or unset), not "
                    f"{self.model.task}"
                )
            self.model.task = "sequence_classification"
            if self.train.exact_match_rows:
                raise ValueError("train.exact_match_rows: a reward model does not generate")
        return self

    def _distill_fits(self) -> None:
        """Distillation: the loss reads the output layer's weight directly, and a held-out
        exact match needs the field of the reference answers."""
        targets = getattr(self.method, "target_modules", "all-linear")
        if isinstance(targets, list) and "lm_head" in targets:
            raise ValueError(
                "method.target_modules: distillation computes its loss from lm_head's weight "
                "directly, so an adapter on lm_head would never train; remove lm_head"
            )
        if self.train.exact_match_rows and self.objective.answer_column is None:
            raise ValueError(
                "train.exact_match_rows: name the field of the prompt rows that holds the "
                "reference answers in objective.answer_column, or set 0"
            )

    def _online_fits(self) -> None:
        """GRPO and RLOO: batches hold whole groups, and a KL penalty needs a reference."""
        objective, train = self.objective, self.train
        rows = train.micro_batch_size * train.gradient_accumulation_steps
        if rows % objective.num_generations:
            raise ValueError(
                f"objective.num_generations: each optimizer step samples whole groups, but "
                f"train.micro_batch_size x gradient_accumulation_steps ({rows}) is not a "
                f"multiple of {objective.num_generations}; change either"
            )
        if (self.data.eval or self.data.eval_ratio) and (
            train.micro_batch_size % objective.num_generations
        ):
            raise ValueError(
                f"objective.num_generations: evaluation samples whole groups per batch of "
                f"train.micro_batch_size ({train.micro_batch_size}) prompts' completions, "
                f"which is not a multiple of {objective.num_generations}; change either"
            )
        if objective.beta > 0 and self.method.type == "full" and self.model.name_or_path is None:
            raise ValueError(
                "objective.beta: with full training the reference model is loaded from "
                "model.name_or_path, and a model built from model.architecture has none; "
                "train it first (e.g. with sft) and start from its output, or set beta 0"
            )
        if self.train.exact_match_rows and not any(
            r.type == "exact_match" for r in objective.rewards
        ):
            raise ValueError(
                "train.exact_match_rows: the reference answers of prompt rows are the column "
                "of an exact_match reward; add one to objective.rewards, or set 0"
            )

    @model_validator(mode="after")
    def _task_fits(self) -> RunConfig:
        task = self.model.task
        if self.objective.type != "sft":
            return self  # checked by _objective_fits
        if task != "causal_lm" and self.data.packing:
            raise ValueError(f"data.packing: only causal_lm models pack samples, not {task}")
        if task in ("masked_lm", "sequence_classification") and self.train.exact_match_rows:
            raise ValueError(f"train.exact_match_rows: {task} models do not generate answers")
        sources = [*self.data.train, *self.data.eval]
        classifying = [s.format.type == "classification" for s in sources]
        if task == "sequence_classification":
            if not all(classifying):
                raise ValueError(
                    "model.task: sequence_classification needs every data source in the "
                    "classification format (text and label fields)"
                )
            if len({tuple(s.format.labels) for s in sources}) > 1:
                raise ValueError("data: every classification source must list the same labels")
        elif any(classifying):
            raise ValueError(
                "data: the classification format needs model.task=sequence_classification"
            )
        if task == "seq2seq":
            for source in sources:
                if source.format.type == "text":
                    raise ValueError(
                        f"model.task: seq2seq needs prompt/answer rows, but data source "
                        f"{source.path} has format 'text'; use completion, alpaca or chat"
                    )
        return self

    @model_validator(mode="after")
    def _exact_match_source(self) -> RunConfig:
        if self.train.exact_match_rows and not self.data.eval:
            raise ValueError(
                "train.exact_match_rows needs held-out rows with answers: set data.eval"
            )
        return self

    @model_validator(mode="after")
    def _tokenizer_source(self) -> RunConfig:
        if (
            self.model.name_or_path is None
            and self.tokenizer.name_or_path is None
            and self.tokenizer.train is None
        ):
            raise ValueError(
                "a model built from model.architecture has no tokenizer: set "
                "tokenizer.name_or_path, or tokenizer.train to train one on the data"
            )
        return self
