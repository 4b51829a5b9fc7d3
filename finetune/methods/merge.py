"""Merge a LoRA/QLoRA adapter into its base model and save a plain Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, PreTrainedModel

import finetune.models  # noqa: F401  (registers the project's architectures)
from finetune.errors import FinetuneError
from finetune.layout import RUN_CONFIG
from finetune.methods.base import TASK_AUTO_CLASSES, quantization_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merged_model(adapter_dir: str | Path, dtype: str = "float32") -> PreTrainedModel:
    """The adapter in `adapter_dir` merged into its base, in `dtype`.

    A QLoRA run's base is loaded 4-bit exactly as in training and then dequantized, so the
    merged weights are the ones the adapter was trained against.

    Raises:
        FinetuneError: `adapter_dir` holds no adapter, or its base cannot be found.
    """
    from peft import PeftConfig, PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise FinetuneError(f"{path}: no adapter_config.json; this is not an adapter directory")
    base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
    if not base_path:
        raise FinetuneError(f"{path}: adapter_config.json names no base model to merge into")
    kwargs = {}
    model_section = _run_section(path, "model")
    auto_class = TASK_AUTO_CLASSES[model_section.get("task") or "causal_lm"]
    method = _run_section(path, "method")
    qlora = method if method.get("type") == "qlora" else None
    if qlora is not None:
        from finetune.config.schema import QLoraMethod

        kwargs["quantization_config"] = quantization_config(QLoraMethod(**qlora))
    try:
        base = auto_class.from_pretrained(base_path, dtype=DTYPES[dtype], **kwargs)
    except OSError as err:
        raise FinetuneError(f"cannot load the base model {base_path!r}: {err}") from None
    if qlora is not None:
        base = base.dequantize(dtype=DTYPES[dtype])
    return PeftModel.from_pretrained(base, path).merge_and_unload()


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the merged model and the adapter's tokenizer to `out_dir`."""
    out = Path(out_dir)
    model = merged_model(adapter_dir, dtype)
    model.config.use_cache = True
    model.save_pretrained(out)
    if (Path(adapter_dir) / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out)
    return out


def _run_section(adapter_dir: Path, name: str) -> dict:
    """A section of the config of the run that wrote `adapter_dir` ({} without one)."""
    run_config = adapter_dir / RUN_CONFIG
    if not run_config.is_file():
        return {}
    return (yaml.safe_load(run_config.read_text()) or {}).get(name) or {}
