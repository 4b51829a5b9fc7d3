"""Faults a run must survive or report: divergence, bad configs over an earlier run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import run_cli

# The shortened quickstart: 24 steps, no evaluation, a checkpoint every step
QUICK = [
    "configs/examples/quickstart.yaml",
    *("--set", "data.eval=[]", "--set", "train.exact_match_rows=0"),
    *("--set", "train.eval_untrained=false", "--set", "train.max_steps=24"),
    *("--set", "output.save_steps=1", "--set", "train.micro_batch_size=8"),
]


def test_divergence_stops_the_run_before_saving_non_finite_weights(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("train", *QUICK, "--set", "train.lr=1e4", "--set", f"output.dir={out}")
    assert result.returncode == 4, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    message = errors[0]
    assert message.startswith("error: training diverged at step ") and "nan" in message
    assert "Traceback" not in result.stderr
    step = int(message.removeprefix("error: training diverged at step ").split(":")[0])
    assert not (out / "model.safetensors").exists()  # no final model
    saved = sorted((out / "checkpoints").glob("checkpoint-*"))
    # Every step before the diverged one was checkpointed, with finite weights only
    assert [p.name for p in saved] == [f"checkpoint-{s}" for s in sorted(range(1, step), key=str)]
    for checkpoint in saved:
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_numbers_are_config_errors(value: str) -> None:
    result = run_cli("validate", "configs/examples/quickstart.yaml", "--set", f"train.lr={value}")
    assert result.returncode == 2
    assert "train.lr: Input should be a finite number" in result.stderr


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "bad",
    ["model.config.num_attention_heads=5", "model.config.ffn=swiglu2"],
    ids=["model-cannot-be-built", "invalid-model-field"],
)
def test_overwrite_with_a_bad_model_keeps_the_earlier_run(tmp_path: Path, bad: str) -> None:
    out = tmp_path / "out"
    short = [*QUICK, "--set", "train.max_steps=4", "--set", "output.save_steps=2"]
    first = run_cli("train", *short, "--set", f"output.dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(out)
    assert "model.safetensors" in before and "checkpoints/checkpoint-4/finetune_complete" in before

    result = run_cli("train", *short, "--set", f"output.dir={out}", "--overwrite", "--set", bad)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert _snapshot(out) == before  # every file of the earlier run, byte for byte
    assert not any(p.name.endswith(".replaced") for p in tmp_path.iterdir())
