"""Preflight: the machine is checked against a valid config before anything is built."""

from __future__ import annotations

import pytest

from finetune.errors import PreflightError
from finetune.preflight import check_precision


def test_bf16_refused_on_cpu_without_native_support() -> None:
    with pytest.raises(PreflightError) as err:
        check_precision("bf16", allow_slow=False, cuda=False, cpu_bf16=False)
    assert "no native bf16" in str(err.value)
    assert "train.precision=fp32" in str(err.value)
    assert "train.allow_slow_precision=true" in str(err.value)


def test_bf16_allowed_when_asked_or_native() -> None:
    check_precision("bf16", allow_slow=True, cuda=False, cpu_bf16=False)
    check_precision("bf16", allow_slow=False, cuda=False, cpu_bf16=True)


def test_fp16_needs_cuda() -> None:
    with pytest.raises(PreflightError, match="fp16 mixed precision needs a CUDA GPU"):
        check_precision("fp16", allow_slow=True, cuda=False, cpu_bf16=True)


def test_fp32_always_runs() -> None:
    check_precision("fp32", allow_slow=False, cuda=False, cpu_bf16=False)
