"""Publish a run to the Hugging Face Hub: pick the files, write the model card, upload.

A push never writes into the output directory. The files to publish are linked into a
temporary staging folder, together with the generated model card (README.md) and loss
curve (loss_curve.png), and that folder is uploaded with `huggingface_hub.upload_folder`.
Only an allowlist leaves the machine: weights as safetensors, config.json (with its
auto_map), the model's .py files for `trust_remote_code`, generation_config.json, the
tokenizer and, for a LoRA run, the peft adapter. Checkpoints, optimizer state,
training_args.bin, run_config.yaml (local paths) and logs stay local.

upload_folder asks the Hub which files it holds already (preupload, sha256 for LFS files),
so a re-push of an unchanged folder uploads nothing and makes no commit; with `hf_xet`
installed it also splits big folders into several resumable commits.

The token comes from HF_TOKEN or `hf auth login` through huggingface_hub; this module
never logs, prints or stores it, and refuses to upload a file that contains it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import TypeAdapter, ValidationError

from finetune.config.data import DataConfig
from finetune.config.hub import LEGACY_REPO_ID, HubConfig
from finetune.config.schema import (
    DistributedConfig,
    FullMethod,
    LoraMethod,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    TrainConfig,
)
from finetune.errors import ConfigError, FinetuneError

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

CARD = "README.md"
LOSS_CURVE = "loss_curve.png"
RUN_CONFIG = "run_config.yaml"  # the names finetune.train.output writes; not imported from
RUN_INFO = "run_info.json"  # there, so that a push does not load torch and transformers
METRICS = "metrics.jsonl"
MERGED = "merged"  # output.dir/merged: the adapter merged into its base (train.merge_adapter)
BASE_MODEL = "base_model"  # output.dir/base_model: the random base of a from-scratch adapter

# What a model repo needs, at the top level of the folder; nothing else is uploaded.
WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
UPLOAD = (
    *WEIGHTS,
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "*.py",  # configuration_*/modeling_* and their sibling imports, for trust_remote_code
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Remote files a new push replaces: stale weights or an old adapter_config.json would make
# transformers load something else than what was pushed.
STALE = (*WEIGHTS, "adapter_config.json", "adapter_model.bin", "pytorch_model*.bin")
TEXT_SUFFIXES = {".json", ".jinja", ".md", ".py", ".txt", ".yaml", ".yml"}
TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")

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


class HubError(FinetuneError):
    """Publishing failed; the message says why and what to do. Local files are unchanged."""


class HubAuthError(HubError):
    """No token, or the Hub refused it (401) or refused the write (403)."""


class HubConnectionError(HubError):
    """The Hub could not be reached, or the connection dropped during the push."""


@dataclass
class PushResult:
    """What a push did."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    changed: bool
    """False when the Hub already held every file: nothing was uploaded, no commit made."""
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# what the run left on disk
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# model card
# --------------------------------------------------------------------------------------


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


def card_metadata(record: RunRecord, hub: HubConfig) -> dict[str, Any]:
    """The model card's YAML metadata, checked with huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    base = base_model(record, hub)
    pipeline_tag, _ = task(record)
    tags = ["finetune"]
    if record.method is not None and record.kind != "base":
        tags.append(record.method.type)
    model_type = (record.config or {}).get("model_type") or (
        record.model.architecture if record.model else None
    )
    if model_type:
        tags.append(model_type)
    extra: dict[str, Any] = {}
    if record.adapter is not None:
        tags += ["transformers", "lora"] if record.adapter.get("peft_type") == "LORA" else []
        if base:
            tags.append(f"base_model:adapter:{base}")  # what peft writes into its own cards
    elif base:
        extra["base_model_relation"] = "finetune"
    if record.auto_map:
        tags.append("custom_code")
    data = ModelCardData(
        library_name="peft" if record.adapter is not None else "transformers",
        license=hub.license,
        base_model=base,
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=sorted(set(hub.datasets) | set(_hub_datasets(record))) or None,
        **extra,
    )
    return data.to_dict()


def _hub_datasets(record: RunRecord) -> list[str]:
    if record.data is None:
        return []
    sources = [*record.data.train, *record.data.eval]
    return [s.path for s in sources if is_hub_id(s.path) and not Path(s.path).suffix]


def model_card(record: RunRecord, hub: HubConfig, repo_id: str, has_curve: bool) -> str:
    """The README.md text: metadata block, usage, training procedure, results, loss curve.

    Raises:
        HubError: the metadata does not survive a round trip through huggingface_hub's
            ModelCard parser (it would be rejected or misread by the Hub).
    """
    from huggingface_hub import ModelCard

    metadata = card_metadata(record, hub)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    sections = [_card_intro(record, hub, repo_id), _card_usage(record, hub, repo_id)]
    if record.kind != "base":  # the run trained an adapter on these weights, not them
        sections += [_card_training(record), _card_results(record), _card_curve(record, has_curve)]
    sections.append(_card_versions(record))
    text = f"---\n{front}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    parsed = ModelCard(text).data.to_dict()
    if parsed != metadata:
        raise HubError(f"internal error: the model card metadata does not round-trip: {parsed}")
    return text


def _card_intro(record: RunRecord, hub: HubConfig, repo_id: str) -> str:
    base = base_model(record, hub)
    what = "A LoRA adapter" if record.adapter is not None else "A model"
    if record.model and record.model.architecture and not base:
        origin = f"trained from scratch (architecture `{record.model.architecture}`)"
    elif base:
        origin = f"fine-tuned from [{base}](https://huggingface.co/{base})"
    else:
        origin = "fine-tuned"
    status = ""
    if record.step is not None:
        status = f"\n\n**Training in progress**: this is the checkpoint at step {record.step}."
    if record.kind == "merged":
        status = "\n\nThe LoRA adapter trained by the run is merged into these weights."
    title = f"# {repo_id.split('/')[-1]}\n\n"
    if record.kind == "base":
        architecture = record.model.architecture if record.model else "new"
        return (
            f"{title}The randomly initialised `{architecture}` model that a LoRA adapter was "
            "trained on with finetune. It was not trained itself; load the adapter on top of it."
        )
    return f"{title}{what} {origin} with finetune.{status}"


def _card_usage(record: RunRecord, hub: HubConfig, repo_id: str) -> str:
    tag, auto = task(record)
    args = [f'"{repo_id}"']
    if hub.revision and hub.revision != "main":
        args.append(f'revision="{hub.revision}"')
    if trusts_remote_code(record):
        args.append("trust_remote_code=True")
    load = ", ".join(args)
    if record.adapter is not None:
        imports = [f"from peft import {auto}", "from transformers import AutoTokenizer"]
    else:
        imports = [f"from transformers import {auto}, AutoTokenizer"]
    lines = [
        *imports,
        "",
        f"tokenizer = AutoTokenizer.from_pretrained({load})",
        f"model = {auto}.from_pretrained({load})",
    ]
    if tag in ("text-generation", "text2text-generation"):
        lines += [
            'inputs = tokenizer("Once upon a time", return_tensors="pt")',
            "outputs = model.generate(**inputs, max_new_tokens=32)",
            "print(tokenizer.decode(outputs[0], skip_special_tokens=True))",
        ]
    elif tag == "text-classification":
        lines += [
            'inputs = tokenizer("A sentence to classify.", return_tensors="pt")',
            "print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])",
        ]
    snippet = "```python\n" + "\n".join(lines) + "\n```"
    if record.adapter is None and tag in ("text-generation", "fill-mask", "text-classification"):
        example = {
            "text-generation": '"Once upon a time"',
            "fill-mask": 'f"Paris is the {pipe.tokenizer.mask_token} of France."',
            "text-classification": '"A sentence to classify."',
        }[tag]
        pipe_args = ", ".join([f'"{tag}"', f"model={args[0]}", *args[1:]])
        snippet += (
            "\n\nor with a pipeline:\n\n```python\nfrom transformers import pipeline\n\n"
            f"pipe = pipeline({pipe_args})\nprint(pipe({example}))\n```"
        )
    if trusts_remote_code(record):
        snippet += (
            "\n\n`trust_remote_code=True` runs the model code stored in this repository "
            "(the configuration and modeling .py files); finetune need not be installed."
        )
    return "## Usage\n\n" + snippet


def _card_training(record: RunRecord) -> str:
    rows = _method_rows(record) + _hyperparameter_rows(record) + _progress_rows(record)
    if not rows:
        return ""
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## Training procedure\n\n| | |\n|---|---|\n{table}"


def _method_rows(record: RunRecord) -> list[tuple[str, str]]:
    method = record.method
    rows: list[tuple[str, str]] = []
    if method is not None and method.type == "full":
        rows.append(("method", "full fine-tuning (every parameter trained)"))
    elif method is not None:
        modules = method.target_modules
        targets = modules if isinstance(modules, str) else ", ".join(modules)
        merged = ", merged into the base weights" if record.kind == "merged" else ""
        rows.append(("method", f"{method.type} (peft){merged}"))
        rows += [
            ("LoRA rank / alpha / dropout", f"{method.rank} / {method.alpha:g} / {method.dropout}"),
            ("target modules", f"`{targets}`"),
        ]
        if method.use_rslora or method.use_dora:
            rows.append(("variant", "rsLoRA" if method.use_rslora else "DoRA"))
    if record.data is not None:
        names = [Path(s.path).name if not is_hub_id(s.path) else s.path for s in record.data.train]
        rows.append(("training data", ", ".join(f"`{n}`" for n in names)))
        rows.append(("max sequence length", str(record.data.max_length)))
    return rows


def _hyperparameter_rows(record: RunRecord) -> list[tuple[str, str]]:
    train = record.train
    if train is None:
        return []
    world = int(record.info.get("world_size", 1))
    effective = train.micro_batch_size * train.gradient_accumulation_steps * world
    length = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs:g} epochs"
    schedule = f"{train.lr:g}, {train.lr_scheduler}, {train.warmup_steps} warm-up steps"
    rows = [
        ("learning rate", schedule),
        ("training length", length),
        (
            "batch size",
            f"{effective} ({train.micro_batch_size} per device x "
            f"{train.gradient_accumulation_steps} accumulation x {world} "
            f"process{'es' if world != 1 else ''})",
        ),
        ("optimizer", f"AdamW, weight decay {train.weight_decay:g}"),
        ("max grad norm", str(train.max_grad_norm)),
        ("precision", train.precision),
        ("seed", str(train.seed)),
    ]
    if train.gradient_checkpointing:
        rows.append(("gradient checkpointing", "on"))
    return rows


def _progress_rows(record: RunRecord) -> list[tuple[str, str]]:
    info = record.info
    rows: list[tuple[str, str]] = []
    world = info.get("world_size")
    hardware = info.get("hardware") or (
        f"{world} process{'es' if world != 1 else ''}" if world is not None else None
    )
    if hardware:
        engine = f", engine {info['engine']}" if info.get("engine") else ""
        zero = record.distributed.zero_stage if record.distributed else None
        rows.append(("hardware", f"{hardware}{engine}{f', ZeRO-{zero}' if zero else ''}"))
    steps = record.step if record.step is not None else info.get("global_step")
    if steps is not None:
        rows.append(("optimizer steps", str(steps)))
        if record.train is not None:
            world = int(info.get("world_size", 1))
            per_step = record.train.micro_batch_size * record.train.gradient_accumulation_steps
            rows.append(("samples seen", f"{steps * per_step * world:,}"))
    tokens = (
        info.get("tokens_seen")
        or info.get("num_input_tokens_seen")
        or _last(record.metrics, "num_input_tokens_seen")
    )
    if tokens:
        rows.append(("tokens seen", f"{int(tokens):,}"))
    if "trainable_parameters" in info and "total_parameters" in info:
        trainable, total = info["trainable_parameters"], info["total_parameters"]
        share = 100 * trainable / total if total else 0
        rows.append(("trainable parameters", f"{trainable:,} of {total:,} ({share:.2f}%)"))
    return rows


def _last(records: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in records if key in r]
    return values[-1] if values else None


def _card_results(record: RunRecord) -> str:
    """Final metrics (evaluation, training loss, exact match), and the same before training
    when the run evaluated the untrained model (`train.eval_untrained`)."""
    metrics = {**(record.info.get("untrained_metrics") or {}), **(record.info.get("metrics") or {})}
    if record.step is not None:  # a checkpoint: the latest logged values so far
        metrics = {k: _last(record.metrics, k) for k in ("loss", "eval_loss")}
    if isinstance(metrics.get("eval_loss"), (int, float)) and "eval_perplexity" not in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    shown = [
        (k, v)
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and k.startswith(("eval_", "untrained_", "exact_match", "train_loss", "loss"))
        and not k.endswith(("_runtime", "_per_second"))
    ]
    if not shown:
        return ""
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in shown)
    title = "Results" if record.step is None else "Results so far"
    return f"## {title}\n\n| metric | value |\n|---|---|\n{table}"


def _card_curve(record: RunRecord, has_curve: bool) -> str:
    if not has_curve:
        return ""
    by_step: dict[int, dict[str, float]] = {}
    for r in record.metrics:
        for key in ("loss", "eval_loss"):
            if key in r and "step" in r:
                by_step.setdefault(r["step"], {})[key] = r[key]
    steps = sorted(by_step)
    shown = steps[:: max(1, len(steps) // 12)]  # a readable table: about a dozen rows
    if shown[-1] != steps[-1]:
        shown.append(steps[-1])
    lines = [
        f"| {s} | {_fmt(by_step[s].get('loss'))} | {_fmt(by_step[s].get('eval_loss'))} |"
        for s in shown
    ]
    table = "| step | training loss | evaluation loss |\n|---|---|---|\n" + "\n".join(lines)
    return f"## Loss curve\n\n![Training and evaluation loss]({LOSS_CURVE})\n\n{table}"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""


def _card_versions(record: RunRecord) -> str:
    from importlib.metadata import PackageNotFoundError, version

    rows = []
    with suppress(PackageNotFoundError):
        rows.append(f"- finetune {version('finetune')}")
    if (record.config or {}).get("transformers_version"):
        rows.append(f"- transformers {record.config['transformers_version']}")
    if (record.adapter or {}).get("peft_version"):
        rows.append(f"- peft {record.adapter['peft_version']}")
    return "### Framework versions\n\n" + "\n".join(rows) if rows else ""


def loss_curve_png(metrics: list[dict[str, Any]]) -> bytes | None:
    """The training (and evaluation) loss against the step as a PNG, drawn with PIL.

    Returns None when fewer than two losses were logged, or Pillow is not installed.
    """
    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r and "step" in r]
    evals = [(r["step"], r["eval_loss"]) for r in metrics if "eval_loss" in r and "step" in r]
    if len(train) + len(evals) < 2:
        return None
    from io import BytesIO

    try:
        from PIL import Image, ImageDraw
    except ImportError:  # Pillow is optional: the card keeps the loss table
        logger.warning("Pillow is not installed: the model card gets no loss_curve.png")
        return None

    width, height, left, right, top, bottom = 800, 460, 70, 20, 56, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(14)
    points = train + evals
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - x0) / (x1 - x0) * (width - left - right)
        y = top + (y1 - loss) / (y1 - y0) * (height - top - bottom)
        return x, y

    for value in _ticks(y0, y1):
        _, y = xy(x0, value)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{value:g}", fill="black", font=font, anchor="rm")
    for value in _ticks(x0, x1):
        x, _ = xy(value, y0)
        draw.line([(x, top), (x, height - bottom)], fill=(235, 235, 235))
        draw.text((x, height - bottom + 8), f"{value:g}", fill="black", font=font, anchor="mt")
    draw.rectangle([(left, top), (width - right, height - bottom)], outline="black")
    series = [(train, (31, 119, 180), "training loss"), (evals, (255, 127, 14), "evaluation loss")]
    for i, (values, color, label) in enumerate(s for s in series if s[0]):
        line = [xy(*p) for p in values]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, y in line:
            draw.ellipse([(x - 2.5, y - 2.5), (x + 2.5, y + 2.5)], fill=color)
        y = 14 + 18 * i
        draw.line([(width - 190, y), (width - 165, y)], fill=color, width=3)
        draw.text((width - 158, y), label, fill="black", font=font, anchor="lm")
    draw.text((left, 24), "Loss", fill="black", font=_font(16), anchor="lm")
    draw.text(((width + left) / 2, height - 12), "step", fill="black", font=font, anchor="ms")
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) inside [low, high]."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


# --------------------------------------------------------------------------------------
# staging: the exact folder that is uploaded
# --------------------------------------------------------------------------------------


def stage(record: RunRecord, hub: HubConfig, repo_id: str, staging: Path) -> list[str]:
    """Fill the empty folder `staging` with what the repo should hold; return the notes.

    Files are symlinked (copied where links are not possible); the card and the loss curve
    are written there, and an adapter_config.json that names a local base model is written
    with the Hub id instead. Nothing in the output directory changes.

    Raises:
        HubError: an adapter whose base model is not on the Hub, or a file holding a token.
    """
    notes = []
    for path in sorted(record.model_dir.iterdir()):
        if path.is_file() and any(fnmatch(path.name, p) for p in UPLOAD):
            _link(path, staging / path.name)
    if record.adapter is not None:
        notes += _stage_adapter_config(record, hub, staging)
    png = loss_curve_png(record.metrics)
    if png is not None:
        (staging / LOSS_CURVE).write_bytes(png)
    (staging / CARD).write_text(model_card(record, hub, repo_id, has_curve=png is not None))
    check_no_secrets(staging)
    return notes


def _link(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, target)


def _stage_adapter_config(record: RunRecord, hub: HubConfig, staging: Path) -> list[str]:
    base = base_model(record, hub)
    declared = record.adapter.get("base_model_name_or_path")
    if base is None:
        where = f"the local path {declared!r}" if declared else "no base model at all"
        first = "the base model"
        if declared and Path(declared).name == BASE_MODEL and Path(declared).is_dir():
            first = f"it with `finetune push {declared} --repo-id NAMESPACE/NAME`"
        raise HubError(
            f"the adapter in {record.model_dir} names {where} as its base model, so "
            f"AutoPeftModel could not load it from the Hub. Push {first} first and pass "
            "--base-model NAMESPACE/NAME (hub.base_model), or train with method.type=full "
            "or train.merge_adapter"
        )
    if declared == base:
        return []
    (staging / "adapter_config.json").unlink()
    (staging / "adapter_config.json").write_text(
        json.dumps({**record.adapter, "base_model_name_or_path": base}, indent=2) + "\n"
    )
    return [f"adapter_config.json: base_model_name_or_path {declared!r} -> {base!r} in the upload"]


def check_no_secrets(folder: Path) -> None:
    """Refuse to upload text files that contain the Hub token or anything shaped like one.

    Raises:
        HubError: names the file; the token itself is never shown.
    """
    from huggingface_hub import get_token

    token = get_token()
    for path in sorted(folder.iterdir()):
        if path.suffix not in TEXT_SUFFIXES or path.stat().st_size > 64 * 2**20:
            continue
        content = path.read_bytes()
        if (token and token.encode() in content) or TOKEN_PATTERN.search(content):
            raise HubError(
                f"{path.name} contains what looks like a Hugging Face access token; remove it "
                "from the file (and revoke the token if it was ever shared). Nothing was uploaded"
            )


# --------------------------------------------------------------------------------------
# upload
# --------------------------------------------------------------------------------------


def push(
    model_dir: Path,
    hub: HubConfig,
    *,
    run_dir: Path | None = None,
    commit_message: str | None = None,
    step: int | None = None,
) -> PushResult:
    """Publish `model_dir` to `hub.repo_id`: create the repo (and branch) and upload.

    Args:
        model_dir: A run's output directory, or one of its checkpoints.
        hub: Target repo, visibility, branch, license and base model.
        run_dir: Where run_config.yaml, run_info.json and metrics.jsonl are (default:
            `model_dir`).
        commit_message: Defaults to "Upload <name> with finetune".
        step: For a checkpoint pushed during training: its step, shown in the card.

    Raises:
        HubAuthError: no token, or the Hub refused it or the write.
        HubConnectionError: the Hub was unreachable or the connection dropped.
        HubError: nothing publishable in `model_dir`, or another refusal by the Hub.
    """
    if hub.repo_id is None:
        raise ConfigError("no repository to push to: pass --repo-id NAMESPACE/NAME")
    record = read_run(Path(model_dir), Path(run_dir) if run_dir else None)
    record.step = step
    _require_token()
    revision = hub.revision or "main"
    message = commit_message or f"Upload {hub.repo_id.split('/')[-1]} with finetune"
    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        staging = Path(tmp)
        notes = stage(record, hub, hub.repo_id, staging)
        files = sorted(p.name for p in staging.iterdir())
        with _hub_errors(hub.repo_id, model_dir):
            commit, changed = _upload(staging, hub, revision, message)
    return PushResult(
        repo_id=hub.repo_id,
        revision=revision,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        changed=changed,
        files=files,
        notes=notes,
    )


def preview(model_dir: Path, hub: HubConfig) -> str:
    """What `push` would upload: the file list and the model card. Needs no token.

    Raises:
        HubError: as `push` would, for anything found before the upload starts.
    """
    if hub.repo_id is None:
        raise ConfigError("no repository to push to: pass --repo-id NAMESPACE/NAME")
    record = read_run(Path(model_dir))
    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        staging = Path(tmp)
        notes = stage(record, hub, hub.repo_id, staging)
        sizes = [(p.name, p.stat().st_size) for p in sorted(staging.iterdir())]
        card = (staging / CARD).read_text()
    lines = [f"would push to {hub.repo_id}@{hub.revision or 'main'}:"]
    lines += [f"  {name} ({size:,} bytes)" for name, size in sizes]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines) + f"\n\n{card}"


def _upload(staging: Path, hub: HubConfig, revision: str, message: str) -> tuple[Any, bool]:
    api = _api()
    _check_token(api)
    api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
    if revision != "main":
        api.create_branch(hub.repo_id, branch=revision, exist_ok=True)
    head = api.model_info(hub.repo_id, revision=revision).sha
    commit = api.upload_folder(
        repo_id=hub.repo_id,
        folder_path=staging,
        revision=revision,
        commit_message=message,
        delete_patterns=list(STALE),
    )
    return commit, commit.oid != head


@cache
def _api() -> Any:
    """One client per process, so that whoami answers are cached (the Hub rate-limits
    whoami strictly, and every_save would otherwise ask at each checkpoint)."""
    from huggingface_hub import HfApi

    return HfApi()


def _require_token() -> None:
    from huggingface_hub import get_token

    if get_token() is None:
        raise HubAuthError(
            "no Hugging Face token found: set the HF_TOKEN environment variable to a token "
            "with write access (https://huggingface.co/settings/tokens) or run "
            "`hf auth login`. Nothing was uploaded"
        )


def _token_source() -> str:
    return "the HF_TOKEN environment variable" if os.environ.get("HF_TOKEN") else "`hf auth login`"


def _check_token(api: Any) -> None:
    """Fail early, with a clear message, on a token the Hub rejects or that cannot write."""
    me = api.whoami(cache=True)
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(
            f"the token from {_token_source()} (user {me.get('name')!r}) is read-only; create "
            "a token with write access at https://huggingface.co/settings/tokens. "
            "Nothing was uploaded"
        )


@contextmanager
def _hub_errors(repo_id: str, model_dir: Path) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into HubErrors that say what to do."""
    try:
        yield
    except HubError:
        raise
    except Exception as err:
        mapped = _map_error(err, repo_id, model_dir)
        if mapped is None:
            raise
        raise mapped from None


def _map_error(err: Exception, repo_id: str, model_dir: Path) -> HubError | None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    retry = f"Run `finetune push {model_dir} --repo-id {repo_id}` again"
    chain = list(_causes(err))
    http = next(
        (e for e in chain if isinstance(e, HfHubHTTPError) and e.response is not None), None
    )
    if http is not None:
        status = http.response.status_code
        detail = _scrub(http.response.headers.get("X-Error-Message") or "")
        detail = f" ({detail})" if detail else ""
        if status == 401:
            return HubAuthError(
                f"the Hub rejected the token from {_token_source()} (401 Unauthorized{detail}): "
                "it is invalid, expired or revoked. Set HF_TOKEN to a valid token with write "
                "access, or run `hf auth login --force`. Nothing was changed locally"
            )
        if status == 403:
            return HubAuthError(
                f"the token from {_token_source()} may not write to {repo_id} (403 "
                f"Forbidden{detail}): use a write token of the user or an organization that "
                f"owns {repo_id.split('/')[0]!r}, or push to a namespace you own. "
                "Nothing was changed locally"
            )
        return HubError(
            f"the Hub refused the push to {repo_id} (HTTP {status}{detail}): "
            f"{_scrub(str(http)).splitlines()[0]}. {retry}; local files are unchanged"
        )
    if any(_is_network_error(e) for e in chain):
        detail = "; ".join(dict.fromkeys(_scrub(str(e)) for e in chain if str(e)))
        return HubConnectionError(
            f"the connection to the Hub at {constants.ENDPOINT} failed while pushing to "
            f"{repo_id} ({detail}). Check the network (and HF_ENDPOINT). {retry}: files that "
            "reached the Hub are not sent twice. Local files are unchanged"
        )
    if isinstance(err, ValueError) and "README.md" in str(err):
        return HubError(f"the Hub rejected the model card metadata: {_scrub(str(err))}")
    return None


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_network_error(err: BaseException) -> bool:
    # httpx (huggingface_hub 1.x) or httpx2 (2.x) transport errors, or socket errors; by
    # name, so that neither HTTP library has to be imported here. huggingface_hub closes its
    # shared client after a connection error, so a parallel upload then fails with
    # "client has been closed".
    names = {cls.__name__ for cls in type(err).__mro__}
    closed = isinstance(err, RuntimeError) and "client has been closed" in str(err)
    return closed or bool(names & {"TransportError", "ConnectionError", "TimeoutError"})


def _scrub(text: str) -> str:
    """`text` with the token (should a server echo it) masked."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


# --------------------------------------------------------------------------------------
# during and after training
# --------------------------------------------------------------------------------------


def check_hub(hub: HubConfig, output: OutputConfig) -> None:
    """Preflight for `hub.push_to_hub`: a token exists (and, on rank 0, the Hub accepts it)
    and `every_save` has checkpoints to push, before hours of training.

    Raises:
        ConfigError: `every_save` without `output.save_steps`.
        HubAuthError, HubConnectionError: no token, or the Hub refuses it.
    """
    if not hub.push_to_hub:
        return
    if hub.strategy == "every_save" and output.save_steps is None:
        raise ConfigError(
            "hub.strategy: every_save pushes each checkpoint, but output.save_steps is not set; "
            "set output.save_steps, or hub.strategy=end"
        )
    _require_token()
    if int(os.environ.get("RANK", "0")) == 0:
        with _hub_errors(hub.repo_id, Path(output.dir)):
            _check_token(_api())


def push_trained(out: Path, hub: HubConfig) -> PushResult:
    """The end-of-training push (rank 0), after the model and run_info.json are saved.

    A run that merged its adapter (output.dir/merged) pushes the merged model, which loads
    anywhere without peft or the base; `finetune push OUTPUT_DIR` still pushes the adapter.

    Raises:
        HubError: the push failed; the message says the model is saved and how to retry.
    """
    merged = out / MERGED
    if (merged / "config.json").is_file():  # the run asked for a standalone model
        out = merged
    try:
        result = push(out, hub, commit_message="End of training")
    except HubError as err:
        raise type(err)(f"training finished and the model is saved in {out}, but {err}") from None
    logger.info("pushed %s to %s (%s)", out, hub.repo_id, result.commit_url)
    return result


def hub_callbacks(hub: HubConfig, out: Path) -> list[TrainerCallback]:
    """Trainer callbacks for `hub.strategy: every_save` (none otherwise)."""
    if not (hub.push_to_hub and hub.strategy == "every_save"):
        return []
    return [_checkpoint_pusher_class()(hub, out)]


@cache
def _checkpoint_pusher_class() -> type:
    # Built on first use: importing transformers' Trainer loads torch, which `finetune push`
    # does not need.
    from transformers import TrainerCallback

    class CheckpointPusher(TrainerCallback):
        """Push each saved checkpoint's model (no optimizer state) to the Hub, on rank 0."""

        def __init__(self, hub: HubConfig, out: Path) -> None:
            self.hub, self.out = hub, out

        def on_save(self, args, state, control, **kwargs) -> None:
            if not state.is_world_process_zero:
                return
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            step = state.global_step
            try:
                push(
                    checkpoint,
                    self.hub,
                    run_dir=self.out,
                    commit_message=f"Training in progress, step {step}",
                    step=step,
                )
            except HubError as err:
                logger.warning("checkpoint %d was not pushed, training goes on: %s", step, err)
            except Exception:  # an upload problem must not end a long run
                logger.exception("checkpoint %d was not pushed, training goes on", step)

    return CheckpointPusher


__all__ = [
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "PushResult",
    "check_hub",
    "hub_callbacks",
    "hub_config_for",
    "model_card",
    "preview",
    "push",
    "push_trained",
    "read_run",
]
