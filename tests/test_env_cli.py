"""`finetune env`: the bug-report summary, checked against the installed packages and CPU."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import torch

from finetune.environment import CPU_FLAGS, PACKAGES, format_report

from .conftest import run_cli


def test_env_reports_installed_versions_and_cpu_features() -> None:
    result = run_cli("env", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    for name in PACKAGES:
        assert report["packages"][name] == metadata.version(name), name
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert report["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["deepspeed"]["accelerator"] in ("cpu", "cuda")
    assert "cpu_adam" in report["deepspeed"]["jit_buildable_ops"]
    assert report["bitsandbytes"]["backend"] in ("CPU", "CUDA", "ROCm", "XPU")

    cpuinfo = Path("/proc/cpuinfo").read_text().split()
    for flag in CPU_FLAGS:
        assert report["cpu"]["flags"][flag] == (flag in cpuinfo), flag

    text = run_cli("env").stdout
    assert text == format_report(report)
    assert f"  - transformers: {metadata.version('transformers')}\n" in text
