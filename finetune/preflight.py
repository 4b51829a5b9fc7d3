"""Checks of this machine and environment against a valid config, before any work starts.

The schema validates on any machine; what depends on the hardware or installed libraries
is checked here, so a config written on a laptop can be validated there and run elsewhere.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import torch

from finetune.config.objective import ONLINE_OBJECTIVES
from finetune.config.schema import RunConfig
from finetune.distributed.checks import check_distributed
from finetune.errors import PreflightError


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def check_precision(
    precision: str,
    allow_slow: bool,
    cuda: bool | None = None,
    cpu_bf16: bool | None = None,
) -> None:
    """Refuse a precision this machine cannot run, or runs far slower than fp32.

    Args:
        precision: `train.precision`.
        allow_slow: `train.allow_slow_precision`.
        cuda: whether a CUDA GPU is used (detected when None).
        cpu_bf16: whether the CPU has native bf16 (detected when None).
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if precision == "fp16" and not cuda:
        raise PreflightError(
            "train.precision: fp16 mixed precision needs a CUDA GPU and none is available; "
            "use train.precision=fp32"
        )
    if precision != "bf16":
        return
    if cuda:
        if not torch.cuda.is_bf16_supported():
            raise PreflightError(
                "train.precision: this GPU does not support bf16; use fp16 or fp32"
            )
        return
    cpu_bf16 = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    if not cpu_bf16 and not allow_slow:
        raise PreflightError(
            "train.precision: bf16 was asked for, but this CPU has no native bf16 "
            "(no avx512_bf16/amx_bf16) and would run about 100x slower than fp32. "
            "Use train.precision=fp32, or set train.allow_slow_precision=true to run anyway."
        )


def require_module(module: str, feature: str, extra: str) -> None:
    """Fail with the install command when an optional library is missing."""
    if importlib.util.find_spec(module) is None:
        raise PreflightError(
            f"{feature} needs the '{module}' package: pip install 'finetune[{extra}]'"
        )


def preflight(cfg: RunConfig) -> None:
    """Check that this machine can run `cfg`.

    Raises:
        PreflightError: with the field to change, or the package to install.
    """
    check_precision(cfg.train.precision, cfg.train.allow_slow_precision)
    if cfg.method.type in ("lora", "qlora"):
        require_module("peft", f"method.type={cfg.method.type}", "peft")
    if cfg.method.type == "qlora":
        require_module("bitsandbytes", "method.type=qlora", "quantization")
    if cfg.objective.type != "sft":
        require_module("trl", f"objective.type={cfg.objective.type}", "trl")
    if cfg.objective.type in ONLINE_OBJECTIVES:
        from finetune.train.rewards import reward_functions

        reward_functions(cfg.objective.rewards)  # a user function that cannot be imported
    if cfg.train.optimizer != "adamw":
        require_module("bitsandbytes", f"train.optimizer={cfg.train.optimizer}", "quantization")
    check_distributed(cfg)  # layout (data x tensor x pipeline), feature combinations
    if cfg.model.attn_implementation == "flash_attention_2":
        if not torch.cuda.is_available():
            raise PreflightError(
                "model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa"
            )
        require_module("flash_attn", "model.attn_implementation=flash_attention_2", "all")
    for logger in cfg.logging.report_to or []:
        require_module(logger, f"logging.report_to: {logger}", logger)
