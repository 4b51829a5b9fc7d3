"""TrainingArguments from the run schema's sections."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from finetune.config.schema import LoggingConfig, OutputConfig, TrainConfig
from finetune.distributed.launch import collective_timeout_s
from finetune.workarounds import set_tensorboard_dir


def report_to(cfg: LoggingConfig) -> list[str]:
    """Trackers to report to: as configured, else TensorBoard when it is installed."""
    if cfg.report_to is not None:
        return list(cfg.report_to)
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


# Schema name -> transformers' optimizer name. LAMB has none there: see optimizer_class.
OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw": "paged_adamw_32bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "lamb": "adamw_torch",
}


def optimizer_class(train: TrainConfig) -> tuple[type, dict[str, Any]] | None:
    """An optimizer the Trainer does not know by name, as (class, kwargs); else None."""
    if train.optimizer != "lamb":
        return None
    from bitsandbytes.optim import LAMB

    betas = (train.adam_beta1, train.adam_beta2)
    return LAMB, {"lr": train.lr, "betas": betas, "eps": train.adam_epsilon}


def training_arguments(
    train: TrainConfig,
    logging: LoggingConfig,
    output: OutputConfig,
    deepspeed: dict[str, Any] | None,
    has_eval: bool,
    timeout_s: int = 1800,
    args_class: type[TrainingArguments] = TrainingArguments,
    **options: Any,
) -> TrainingArguments:
    """Translate the train, logging and output sections for transformers' Trainer (or, as
    `args_class`, a TRL trainer's config with the objective's `options`).

    Creating the arguments also sets up the distributed state when the process was started
    by a launcher (deepspeed, torchrun), so this comes before any rank writes a file.
    """
    out = Path(output.dir)
    evaluate = has_eval and train.eval_steps is not None
    trackers = report_to(logging)
    if "tensorboard" in trackers:
        set_tensorboard_dir(out / "tensorboard")
    return args_class(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=train.micro_batch_size,
        per_device_eval_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        optim=OPTIMIZERS[train.optimizer],
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_epsilon=train.adam_epsilon,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        max_grad_norm=train.max_grad_norm or 0.0,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        activation_checkpointing=train.gradient_checkpointing,
        seed=train.seed,
        logging_steps=logging.steps,
        report_to=trackers,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=train.eval_steps if evaluate else None,
        save_strategy="steps" if output.save_steps else "no",
        save_steps=output.save_steps or 500,
        save_total_limit=None,  # CheckpointMarker rotates, once the newest one is sealed
        # Without use_cpu, accelerate picks no distributed backend on CPU, counts a world
        # size of 1, and each rank trains alone on all the data.
        use_cpu=not torch.cuda.is_available(),
        deepspeed=deepspeed,
        ddp_timeout=collective_timeout_s(timeout_s),
        remove_unused_columns=False,
        disable_tqdm=False,
        include_num_input_tokens_seen=options.pop("include_num_input_tokens_seen", "non_padding"),
        **options,
    )
