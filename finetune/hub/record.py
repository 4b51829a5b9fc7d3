"""What a run left on disk, read for a push: the model files, run_config.yaml (section by
section, without importing the model classes), run_info.json and metrics.jsonl; and what
they say about the task, the base model and remote code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from finetune.config.data import DataConfig
from finetune.config.hub import LEGACY_REPO_ID, HubConfig
from finetune.config.objective import ObjectiveConfig
from finetune.config.schema import (
    DistributedConfig,
    FullMethod,
    LoraMethod,
    MethodConfig,
    ModelConfig,
    TrainConfig,
)
from finetune.errors import ConfigError
from finetune.hub.errors import HubError
from finetune.layout import (
    BASE_MODEL,
    MERGED,
    METRICS,
    RUN_CONFIG,
    RUN_INFO,
    STAGING,
    save_being_moved,
)

logger = logging.getLogger(__name__)

# The weights of a saved model (safetensors, possibly sharded, with their index)
WEIGHTS = ("*.safetensors", "*.safetensors.index.json")


# Architecture class suffix -> (pipeline tag, Auto class)
TASKS = {
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "ForMaskedLM": ("fill-mask", "AutoModelForMaskedLM"),
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification"),
    "ForConditionalGeneration": ("text2text-generation", "AutoModelForSeq2SeqLM"),
}


AUTO_TASKS = {auto: tag for tag, auto in TASKS.values()}


# peft task_type -> (pipeline tag, AutoPeft class)
PEFT_TASKS = {
    "CAUSAL_LM": ("text-generation", "AutoPeftModelForCausalLM"),
    "SEQ_CLS": ("text-classification", "AutoPeftModelForSequenceClassification"),
    "TOKEN_CLS": ("token-classification", "AutoPeftModelForTokenClassification"),
    "SEQ_2_SEQ_LM": ("text2text-generation", "AutoPeftModelForSeq2SeqLM"),
    "FEATURE_EXTRACTION": ("feature-extraction", "AutoPeftModelForFeatureExtraction"),
}


@dataclass
class RunRecord:
    """The parts of an output directory that the upload and the model card need.

    `model_dir` holds the weights (the output directory, or a checkpoint in it); `run_dir`
    holds the run's records (run_config.yaml, run_info.json, metrics.jsonl). Run config
    sections are validated one by one with their schema classes; the `model` section is
    read without its architecture check, which would import every model class (and torch)
    for a card that only needs three of its fields.
    """

    model_dir: Path
    config: dict[str, Any] | None
    adapter: dict[str, Any] | None
    info: dict[str, Any]
    metrics: list[dict[str, Any]]
    model: ModelConfig | None = None
    method: FullMethod | LoraMethod | None = None
    train: TrainConfig | None = None
    data: DataConfig | None = None
    distributed: DistributedConfig | None = None
    objective: Any = None
    """The run's objective section (None for runs from before it existed: SFT)."""
    step: int | None = None
    """Set for a checkpoint pushed while training goes on."""
    kind: str = "run"
    """`run`, `merged` (a run's merged adapter) or `base` (the random base of an adapter
    trained on a new model): what the card says about the weights."""

    @property
    def auto_map(self) -> dict[str, str]:
        return (self.config or {}).get("auto_map") or {}


def read_run(model_dir: Path, run_dir: Path | None = None) -> RunRecord:
    """Read what `model_dir` (weights) and `run_dir` (records, default the same) hold.

    Raises:
        HubError: the folder holds no Hugging Face model or adapter.
    """
    kind = model_dir.name if model_dir.name in (MERGED, BASE_MODEL) else "run"
    if run_dir is None:
        in_run = kind != "run" and (model_dir.parent / RUN_CONFIG).is_file()
        run_dir = model_dir.parent if in_run else model_dir
    if not model_dir.is_dir():
        raise HubError(f"{model_dir} is not a directory; pass a finished run's output.dir")
    if save_being_moved(model_dir):
        raise HubError(
            f"{model_dir}: its final model is being moved into place, or a run was killed "
            f"doing so ({model_dir / STAGING} holds the rest); wait for the run to end, or "
            "finish the move with `finetune train RUN_CONFIG --resume` on it. Nothing was uploaded"
        )
    config = _read_json(model_dir / "config.json")
    adapter = _read_json(model_dir / "adapter_config.json")
    has_weights = any(next(model_dir.glob(p), None) for p in WEIGHTS)
    if not has_weights or (config is None and adapter is None):
        raise HubError(
            f"{model_dir} holds no model to push (it needs config.json or adapter_config.json "
            "and .safetensors weights); pass the output.dir of a finished run"
        )
    record = RunRecord(
        model_dir=model_dir,
        config=config,
        adapter=adapter,
        info=_read_json(run_dir / RUN_INFO) or {},
        metrics=_read_metrics(run_dir / METRICS),
        kind="base" if kind == BASE_MODEL and run_dir != model_dir else kind,
    )
    _read_run_config(run_dir / RUN_CONFIG, record)
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HubError(f"{path} is not valid JSON ({err}); it cannot be published") from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
    return records


SECTIONS = {
    "method": TypeAdapter(MethodConfig),
    "train": TypeAdapter(TrainConfig),
    "data": TypeAdapter(DataConfig),
    "distributed": TypeAdapter(DistributedConfig),
    "objective": TypeAdapter(ObjectiveConfig),
}


def _read_run_config(path: Path, record: RunRecord) -> None:
    if not path.is_file():
        return
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        logger.warning("%s is not a run config; the model card leaves the run out", path)
        return
    if isinstance(raw.get("model"), dict):
        record.model = ModelConfig.model_construct(**raw["model"])
    for name, adapter in SECTIONS.items():
        if name not in raw:
            continue
        try:
            setattr(record, name, adapter.validate_python(raw[name]))
        except ValidationError as err:  # a run from another finetune version
            logger.warning("%s: section %r left out of the model card: %s", path, name, err)


def hub_config_for(output_dir: Path, **overrides: Any) -> HubConfig:
    """The run's `hub` section (from run_config.yaml) with `overrides` applied.

    Overrides that are None are left out, so CLI options that were not given keep the run's
    values.

    Raises:
        ConfigError: a value is invalid; the message names the option.
    """
    raw: dict[str, Any] = {}
    run_config = output_dir / RUN_CONFIG
    if run_config.is_file():
        raw = dict((yaml.safe_load(run_config.read_text()) or {}).get("hub") or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw["push_to_hub"] = False  # the push is happening; the flag only matters for training
    try:
        return HubConfig.model_validate(raw)
    except ValidationError as err:
        messages = []
        for error in err.errors():
            name = str(error["loc"][0]) if error["loc"] else "repo_id"
            message = error["msg"].removeprefix("Value error, ")
            messages.append(f"--{name.replace('_', '-')}: {message}")
        raise ConfigError("; ".join(messages), messages) from None


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id rather than a local path."""
    if not name or os.path.isabs(name) or name.startswith((".", "~")) or Path(name).exists():
        return False
    return bool(LEGACY_REPO_ID.match(name))


def _hub_id_from_cache_path(path: str) -> str | None:
    """`org/name` for a folder inside the Hugging Face cache (models--org--name/snapshots/x)."""
    for part in Path(path).parts:
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/", 1)
    return None


def base_model(record: RunRecord, hub: HubConfig) -> str | None:
    """The Hub id the run started from: hub.base_model, else model.name_or_path or the
    adapter's base when that is a Hub id (or a folder in the Hub cache)."""
    if hub.base_model:
        return hub.base_model
    candidates = [
        (record.adapter or {}).get("base_model_name_or_path"),
        record.model.name_or_path if record.model else None,
    ]
    for name in candidates:
        if is_hub_id(name):
            return name
        if name and (cached := _hub_id_from_cache_path(name)):
            return cached
    return None


def task(record: RunRecord) -> tuple[str | None, str]:
    """(pipeline tag, Auto class) for the pushed model."""
    if record.adapter is not None:
        return PEFT_TASKS.get(record.adapter.get("task_type") or "", (None, "AutoPeftModel"))
    architecture = ((record.config or {}).get("architectures") or [""])[0]
    for auto, ref in record.auto_map.items():  # a custom model names its own Auto classes
        if ref.rsplit(".", 1)[-1] == architecture and auto in AUTO_TASKS:
            return AUTO_TASKS[auto], auto
    for suffix, (tag, auto) in TASKS.items():
        if architecture.endswith(suffix):
            if suffix == "ForConditionalGeneration" and not record.config.get("is_encoder_decoder"):
                break  # vision-language models share the suffix
            return tag, auto
    return None, "AutoModel"


def trusts_remote_code(record: RunRecord) -> bool:
    """Whether loading needs trust_remote_code=True (the model, or an adapter's base)."""
    return bool(record.auto_map) or bool(record.model and record.model.trust_remote_code)
