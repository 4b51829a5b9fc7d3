"""What a bug report needs to know about this machine and its libraries (`finetune env`).

Versions are read from the installed distributions' metadata, so a library that fails to import
is still reported; the probes that must import a library (torch's devices, DeepSpeed's ops,
bitsandbytes' backend) report their error instead of raising it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

# The distributions a finetune run touches, in the order a reader looks for them
PACKAGES = (
    "finetune",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "deepspeed",
    "bitsandbytes",
    "pydantic",
)

# CPU features that change what runs fast (bf16, int8 and AMX matrix units)
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_info() -> dict[str, Any]:
    """Processor name, logical cores and which of `CPU_FLAGS` it has (Linux /proc/cpuinfo)."""
    info: dict[str, Any] = {"processor": platform.processor() or platform.machine()}
    info["logical_cores"] = os.cpu_count()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info["flags"] = "unknown (no /proc/cpuinfo)"
        return info
    for line in lines:
        if line.startswith("model name"):
            info["processor"] = line.split(":", 1)[1].strip()
            break
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split()}
    info["flags"] = {flag: flag in flags for flag in CPU_FLAGS}
    return info


def torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cuda_build": torch.version.cuda or "none (CPU build)",
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [_gpu(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def _gpu(index: int) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    memory = torch.cuda.get_device_properties(index).total_memory / 2**30
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor}, {memory:.0f} GiB)"


def deepspeed_info() -> dict[str, Any]:
    """DeepSpeed's accelerator, its pre-built ops, and the ops that can be JIT-built here."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _cuda_available() else "cpu")
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder.all_ops import ALL_OPS

    buildable = []
    for name, builder in sorted(ALL_OPS.items()):
        try:
            if builder is not None and builder.is_compatible(verbose=False):
                buildable.append(name)
        except Exception:  # a builder's probe may fail on a machine it does not support
            continue
    return {
        "accelerator": get_accelerator().device_name(),
        "prebuilt_ops": sorted(name for name, built in installed_ops.items() if built) or "none",
        "jit_buildable_ops": buildable,
    }


def bitsandbytes_info() -> dict[str, Any]:
    from bitsandbytes import cextension

    native = not isinstance(cextension.lib, cextension.ErrorHandlerMockBNBNativeLibrary)
    return {"backend": cextension.BNB_BACKEND, "native_library_loaded": native}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _probe(fn: Callable[[], dict[str, Any]], package: str) -> dict[str, Any] | str:
    if package_version(package) == "not installed":
        return "not installed"
    try:
        # Libraries log to stdout on import (DeepSpeed's accelerator line): keep it for the report
        with contextlib.redirect_stdout(sys.stderr):
            return fn()
    except Exception as err:  # the report must come out even when a library is broken
        return f"error: {type(err).__name__}: {err}"


def collect() -> dict[str, Any]:
    """Everything `finetune env` prints, as a JSON-serialisable dict."""
    return {
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "cpu": cpu_info(),
        "torch": _probe(torch_info, "torch"),
        "deepspeed": _probe(deepspeed_info, "deepspeed"),
        "bitsandbytes": _probe(bitsandbytes_info, "bitsandbytes"),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as indented `- key: value` lines, ready to paste into an issue."""
    lines: list[str] = []

    def walk(value: Any, key: str, depth: int) -> None:
        pad = "  " * depth
        if isinstance(value, dict):
            lines.append(f"{pad}- {key}:")
            for sub_key, sub_value in value.items():
                walk(sub_value, sub_key, depth + 1)
        else:
            text = ", ".join(map(str, value)) if isinstance(value, list) else value
            lines.append(f"{pad}- {key}: {text}")

    for key, value in report.items():
        walk(value, key, 0)
    return "\n".join(lines) + "\n"
