"""Build the DeepSpeed JSON config from the distributed section.

DeepSpeed JSON stays DeepSpeed JSON: a preset or the user's file is used as written, except
for the values the framework owns (batch sizes, accumulation, clipping, precision), which
are set to "auto" so transformers' Trainer fills them from the run schema. A file that
states one of them differently from the schema is refused rather than silently overridden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.config.schema import DistributedConfig, TrainConfig
from finetune.errors import ConfigError


def zero_preset(stage: int) -> dict[str, Any]:
    """The ZeRO preset for `stage`, with every framework-owned value left to "auto"."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # Without this only a DeepSpeed checkpoint is saved, no model.safetensors.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {"zero_optimization": zero}


def _owned_values(train: TrainConfig) -> dict[tuple[str, ...], Any]:
    return {
        ("train_micro_batch_size_per_gpu",): train.micro_batch_size,
        ("gradient_accumulation_steps",): train.gradient_accumulation_steps,
        ("gradient_clipping",): train.max_grad_norm or 0.0,
        ("bf16", "enabled"): train.precision == "bf16",
        ("fp16", "enabled"): train.precision == "fp16",
    }


def deepspeed_config(cfg: DistributedConfig, train: TrainConfig) -> dict[str, Any] | None:
    """The DeepSpeed config dict for this run, or None when DeepSpeed is not used.

    Raises:
        ConfigError: the JSON file is unreadable or contradicts the train section.
    """
    if cfg.deepspeed is not None:
        ds = _read_json(Path(cfg.deepspeed))
    elif cfg.zero_stage is not None:
        ds = zero_preset(cfg.zero_stage)
    else:
        return None
    for keys, value in _owned_values(train).items():
        node = ds
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        stated = node.get(keys[-1], "auto")
        if stated != "auto" and stated != value:
            raise ConfigError(
                f"distributed.deepspeed: {'.'.join(keys)} is {stated!r} in {cfg.deepspeed}, "
                f'but the train section gives {value!r}; set it to "auto" or remove it'
            )
        node[keys[-1]] = "auto"
    ds.setdefault("train_batch_size", "auto")
    return ds


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"distributed.deepspeed: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"distributed.deepspeed: {path} must hold a JSON object")
    return data
