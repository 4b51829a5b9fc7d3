"""Build the DeepSpeed JSON config from the distributed section.

DeepSpeed JSON stays DeepSpeed JSON: a preset or the user's file is used as written, except
for the values the framework owns, which come from the run schema:

- batch sizes, accumulation, clipping and precision are set to "auto", so transformers'
  Trainer fills them from the train section (for a pipeline, `resolve_batch_values`);
- offload (`distributed.offload`) and tensor parallel (`distributed.tensor_parallel`) are
  written into `zero_optimization` and `tensor_parallel`.

A file that states one of them differently from the schema is refused rather than
silently overridden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.config.schema import DistributedConfig, OffloadConfig, TrainConfig
from finetune.errors import ConfigError

# The ZeRO presets, as DeepSpeed JSON: `zero_stage: N` takes zeroN.json. They ship with the
# package and are linked as configs/deepspeed/ for `distributed.deepspeed` and for reading.
PRESETS = Path(__file__).resolve().parent.parent / "resources" / "deepspeed"


def zero_preset(stage: int, offload: str = "none") -> dict[str, Any]:
    """The shipped preset for ZeRO `stage` (zero{stage}.json, or zero{stage}_offload.json
    with `offload="cpu"`), every framework-owned value left to "auto"."""
    name = f"zero{stage}_offload" if offload == "cpu" and stage >= 1 else f"zero{stage}"
    return _read_json(PRESETS / f"{name}.json")


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
        ConfigError: the JSON file is unreadable or contradicts the schema.
    """
    if not cfg.enabled:
        return None
    if cfg.deepspeed is not None:
        ds = _read_json(Path(cfg.deepspeed))
    else:
        ds = zero_preset(cfg.zero_stage or 0)
    source = cfg.deepspeed or f"the zero_stage {cfg.zero_stage} preset"
    for keys, value in _owned_values(train).items():
        node = ds
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        stated = node.get(keys[-1], "auto")
        if stated != "auto" and stated != value:
            raise ConfigError(
                f"distributed.deepspeed: {'.'.join(keys)} is {stated!r} in {source}, "
                f'but the train section gives {value!r}; set it to "auto" or remove it'
            )
        node[keys[-1]] = "auto"
    ds.setdefault("train_batch_size", "auto")
    _gather_zero3_weights_on_save(ds, source)
    _apply_offload(ds, cfg.offload, source)
    _apply_tensor_parallel(ds, cfg.tensor_parallel, source)
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it names none)."""
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def _gather_zero3_weights_on_save(ds: dict[str, Any], source: str) -> None:
    """ZeRO-3 saves a model only when its shards are gathered at save time; without that
    the final save would be DeepSpeed's sharded checkpoint, not a Hugging Face model."""
    if zero_stage(ds) != 3:
        return
    zero = ds["zero_optimization"]
    if zero.get("stage3_gather_16bit_weights_on_model_save", True) is False:
        raise ConfigError(
            f"distributed.deepspeed: {source} sets zero_optimization."
            "stage3_gather_16bit_weights_on_model_save to false; the run's final model is "
            "an ordinary Hugging Face checkpoint, which needs the ZeRO-3 shards gathered "
            "when it is saved. Set it to true or remove it"
        )
    zero["stage3_gather_16bit_weights_on_model_save"] = True


def _apply_offload(ds: dict[str, Any], offload: OffloadConfig, source: str) -> None:
    zero = ds.setdefault("zero_optimization", {})
    stage = zero_stage(ds)
    for field, key, device in (
        ("optimizer", "offload_optimizer", offload.optimizer),
        ("params", "offload_param", offload.params),
    ):
        if device == "none":
            continue
        if field == "params" and stage != 3:
            raise ConfigError(
                f"distributed.offload.params: {source} uses ZeRO stage {stage}; parameters "
                "are offloaded by stage 3 only. Use zero_stage=3 or offload.params=none"
            )
        if stage == 0:
            raise ConfigError(
                f"distributed.offload.optimizer: {source} uses ZeRO stage 0, which does not "
                "offload; use ZeRO stage 1, 2 or 3"
            )
        stated = zero.get(key, {}).get("device", device)
        if stated not in (device, "none"):
            raise ConfigError(
                f"distributed.offload.{field}: {source} offloads to {stated!r} in "
                f"zero_optimization.{key}, the schema says {device!r}; remove one of them"
            )
        target: dict[str, Any] = {"device": device, "pin_memory": offload.pin_memory}
        if device == "nvme":
            target["nvme_path"] = offload.nvme_path
        zero[key] = {**zero.get(key, {}), **target}


def _apply_tensor_parallel(ds: dict[str, Any], size: int, source: str) -> None:
    stated = ds.get("tensor_parallel", {}).get("autotp_size", 1)
    if size == 1 and stated == 1:
        return
    if size != stated and stated != 1:
        raise ConfigError(
            f"distributed.tensor_parallel: {source} sets tensor_parallel.autotp_size "
            f"{stated}, the schema says {size}; set distributed.tensor_parallel={stated}"
        )
    ds.setdefault("tensor_parallel", {})["autotp_size"] = max(size, stated)
    # An AutoTP run saves model.safetensors only when the shards are gathered at save time.
    ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True


def resolve_batch_values(
    ds: dict[str, Any], train: TrainConfig, data_parallel: int
) -> dict[str, Any]:
    """`ds` with the framework's "auto" values filled in, for DeepSpeed engines that run
    without transformers' Trainer (`PipelineTrainer`)."""
    resolved = json.loads(json.dumps(ds))
    resolved.update(
        train_micro_batch_size_per_gpu=train.micro_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        train_batch_size=train.micro_batch_size * train.gradient_accumulation_steps * data_parallel,
        gradient_clipping=train.max_grad_norm or 0.0,
    )
    resolved["bf16"] = {**resolved.get("bf16", {}), "enabled": train.precision == "bf16"}
    resolved["fp16"] = {**resolved.get("fp16", {}), "enabled": train.precision == "fp16"}
    return resolved


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"distributed.deepspeed: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"distributed.deepspeed: {path} must hold a JSON object")
    return data
