"""Each workaround in `finetune/workarounds.py` is still needed: these tests check that the
cause is still there in the installed release. When one fails, upstream has changed (usually
fixed) what the workaround is for: remove it (or adapt it) and its test."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
from pathlib import Path

import torch

from finetune.workarounds import close_progress_bars, set_tensorboard_dir
from tests.models.tiny import llama


def _package_file(package: str, relative: str) -> Path:
    """A file of an installed package, found without importing it."""
    origin = importlib.util.find_spec(package).origin
    return Path(origin).parent / relative


def _function_source(path: Path, name: str) -> str:
    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(path.read_text(), node)


def _4bit_layer(repack: bool):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")  # quantizes
    layer.support_avx512bf16_for_cpu = repack
    return layer


def _input_gradient_after_an_evaluation(layer) -> torch.Tensor | None:
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))
    layer.train()
    x = torch.randn(2, 64, requires_grad=True)
    layer(x).sum().backward()
    return x.grad


def test_bitsandbytes_cpu_repack() -> None:
    """keep_4bit_training_layout: with AVX512-BF16, an evaluation repacks the weight and
    the gradient stops at the layer; the unpacked layout passes it on."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    assert "support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit.forward)
    kept = _input_gradient_after_an_evaluation(_4bit_layer(repack=False))
    assert kept is not None and kept.abs().sum() > 0
    if has_avx512bf16():  # the repack runs only on such CPUs (bitsandbytes' own check)
        assert _input_gradient_after_an_evaluation(_4bit_layer(repack=True)) is None


def test_deepspeed_never_unlinks_its_cpu_buffers() -> None:
    """unlink_shm_allreduce_buffer: DeepSpeed's CPU comm op defines `shared_close` (which
    unlinks a buffer) and never calls it."""
    source = _package_file("deepspeed", "ops/csrc/cpu/comm/shm.cpp").read_text()
    assert "void shared_close(SharedData* data)" in source
    assert source.count("shared_close(") == 1  # the definition alone


def test_deepspeed_clipping_counts_flagged_parameters_only() -> None:
    """mark_stage_parameters: DeepSpeed's clipping counts a later stage's parameters only
    when they carry Megatron's `model_parallel` flag."""
    utils = _package_file("deepspeed", "runtime/utils.py")
    clip = _function_source(utils, "clip_grad_norm_")
    assert "mpu.get_model_parallel_rank() == 0) or is_model_parallel_parameter(p)" in clip
    assert "model_parallel" in _function_source(utils, "is_model_parallel_parameter")


def test_tqdm_lists_open_bars() -> None:
    """close_progress_bars reads tqdm's private list of open bars."""
    from tqdm.auto import tqdm
    from tqdm.std import tqdm as std_tqdm

    bar = tqdm(total=3, disable=False)
    assert bar in std_tqdm._instances
    close_progress_bars()
    assert bar not in std_tqdm._instances


def test_transformers_reads_tensorboard_dir_from_env(tmp_path: Path, monkeypatch) -> None:
    """set_tensorboard_dir: TrainingArguments has no logging_dir, and the TensorBoard callback
    takes its directory from the environment."""
    from transformers import TrainingArguments
    from transformers.integrations import TensorBoardCallback

    assert "logging_dir" not in {f.name for f in dataclasses.fields(TrainingArguments)}
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    set_tensorboard_dir(tmp_path / "tb")
    assert TensorBoardCallback().logging_dir == str(tmp_path / "tb")


def test_transformers_warns_of_tied_keys_on_resume(tmp_path: Path, monkeypatch) -> None:
    """without_tied_keys: loading a tied model's checkpoint the way the Trainer resumes
    reports the tied output matrix as missing, and the Trainer warns of it; GuardedTrainer
    does not (an untied key that is really missing still warns)."""
    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments
    from transformers import trainer as trainer_module

    from finetune.train.divergence import GuardedTrainer

    warnings: list[str] = []
    monkeypatch.setattr(trainer_module.logger, "warning", lambda msg, *a, **k: warnings.append(msg))
    model = llama(tie=True)
    model.save_pretrained(tmp_path / "saved")
    result = model.load_state_dict(load_file(tmp_path / "saved" / "model.safetensors"), False)
    assert result.missing_keys == ["lm_head.weight"]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    Trainer(model=model, args=args)._issue_warnings_after_load(result)
    assert any("missing keys" in w for w in warnings)
    warnings.clear()
    guarded = GuardedTrainer(model=model, args=args)
    guarded._issue_warnings_after_load(result)
    assert not any("missing keys" in w for w in warnings)
    guarded._issue_warnings_after_load(result._replace(missing_keys=["model.norm.weight"]))
    assert any("model.norm.weight" in w for w in warnings)
