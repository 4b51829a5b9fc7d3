"""Resume reproduces the uninterrupted run; gradient accumulation is not a different batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from finetune.config import validate_config
from finetune.train.checkpoints import CHECKPOINT_MANIFEST
from finetune.train.runner import prepare_run
from tests.conftest import REPO, run_cli, tiny_config, write_config

STEPS, HALF = 40, 20


def _losses(out: Path) -> dict[int, float]:
    """Training loss per logged step; a resumed run's later entries replace earlier ones."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _resume_config(tmp_path: Path, name: str) -> Path:
    cfg = tiny_config(tmp_path)
    cfg["train"].update(max_steps=STEPS)
    cfg["logging"]["steps"] = 1
    cfg["output"].update(dir=str(tmp_path / name), save_steps=HALF)
    return write_config(tmp_path / f"{name}.yaml", cfg)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    result = run_cli("train", str(_resume_config(tmp, "full")))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "full"


def _start_run(config: Path, output: int) -> subprocess.Popen:
    """`finetune train CONFIG` in the background; `output` is subprocess.PIPE or DEVNULL."""
    return subprocess.Popen(
        [sys.executable, "-m", "finetune.cli", "train", str(config)],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=output,
        stderr=output,
        text=True,
    )


def _kill_after_half(config: Path, out: Path) -> None:
    """Start a run and SIGKILL it as soon as its half-way checkpoint is complete."""
    proc = _start_run(config, subprocess.DEVNULL)
    marker = out / "checkpoints" / f"checkpoint-{HALF}" / CHECKPOINT_MANIFEST
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    # If the run got further before the kill landed, drop what it wrote after the
    # checkpoint, as if the kill had come right then.
    for later in out.glob("checkpoints/checkpoint-*"):
        if int(later.name.split("-")[1]) > HALF:
            shutil.rmtree(later)
    for name in ("model.safetensors", "run_info.json"):
        (out / name).unlink(missing_ok=True)


@pytest.mark.faults
def test_resume_reproduces_the_uninterrupted_run(uninterrupted: Path, tmp_path: Path) -> None:
    config = _resume_config(tmp_path, "killed")
    out = tmp_path / "killed"
    _kill_after_half(config, out)
    result = run_cli("train", str(config), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]

    expected, got = _losses(uninterrupted), _losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(HALF + 1, STEPS + 1):
        assert got[step] == expected[step], f"step {step}: {got[step]} != {expected[step]}"
    final, reference = (
        load_file(out / "model.safetensors"),
        load_file(uninterrupted / "model.safetensors"),
    )
    assert final.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=0, msg=name)


def _copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a finished run and its own resolved config, pointing at the copy."""
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    cfg = yaml.safe_load((out / "run_config.yaml").read_text())
    cfg["output"]["dir"] = str(out)
    return out, write_config(tmp_path / "copy.yaml", cfg)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["unsealed", "bit-flipped optimizer"])
def test_damaged_newest_checkpoint_is_skipped(
    uninterrupted: Path, tmp_path: Path, damage: str
) -> None:
    """Simulate a kill during the step-40 save (its files are there, the manifest is not),
    or a bit flipped in its optimizer state; nothing of the end of the run (run_info.json
    is written last) exists yet. Resume takes checkpoint-20 and logs the uninterrupted
    run's losses, each step once."""
    out, cfg = _copy_run(uninterrupted, tmp_path)
    newest = out / "checkpoints" / f"checkpoint-{STEPS}"
    if damage == "unsealed":
        (newest / CHECKPOINT_MANIFEST).unlink()
    else:
        _flip_a_byte(newest / "optimizer.pt")
    (out / "run_info.json").unlink()
    result = run_cli("train", str(cfg), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    assert _losses(out) == _losses(uninterrupted)
    if damage != "unsealed":
        assert f"skipping checkpoint-{STEPS}: optimizer.pt does not match" in result.stderr
        assert f"resuming from checkpoint-{HALF}" in result.stderr
        kept = out / "checkpoints" / f"checkpoint-{STEPS}.damaged"
        assert (kept / "optimizer.pt").is_file()  # kept for inspection, never taken


def test_resume_refuses_a_changed_model(uninterrupted: Path, tmp_path: Path) -> None:
    _, cfg = _copy_run(uninterrupted, tmp_path)
    result = run_cli("train", str(cfg), "--resume", "--set", "model.config.hidden_size=32")
    assert result.returncode == 2
    assert "model.config.hidden_size: 64 -> 32" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_without_checkpoints_is_refused(tmp_path: Path) -> None:
    result = run_cli("train", str(_resume_config(tmp_path, "never")), "--resume")
    assert result.returncode == 2
    assert "holds no run to resume" in result.stderr


class _FirstStepGradients(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step == 0:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _first_steps(tmp_path: Path, micro: int, accumulation: int) -> tuple[list[float], dict]:
    cfg = tiny_config(tmp_path)
    cfg["train"].update(
        max_steps=3, micro_batch_size=micro, gradient_accumulation_steps=accumulation
    )
    cfg["logging"]["steps"] = 1
    cfg["output"]["dir"] = str(tmp_path / f"out-{micro}x{accumulation}")
    grads = _FirstStepGradients()
    run = prepare_run(validate_config(cfg), callbacks=[grads])
    run.trainer.train()
    losses = [h["loss"] for h in run.trainer.state.log_history if "loss" in h]
    return losses, grads.grads


def test_gradient_accumulation_normalises_over_tokens(tmp_path: Path) -> None:
    # The samples have 5 to 20 words: a per-micro-batch mean would weight them differently.
    big_losses, big_grads = _first_steps(tmp_path, micro=8, accumulation=1)
    small_losses, small_grads = _first_steps(tmp_path, micro=2, accumulation=4)
    assert len(big_losses) == 3
    torch.testing.assert_close(small_losses, big_losses, rtol=0, atol=1e-6)
    for name, grad in big_grads.items():
        torch.testing.assert_close(small_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def _signal_mid_run(config: Path, out: Path, signum: int) -> subprocess.CompletedProcess:
    """Start a run, send `signum` once it has logged a few steps, and wait for it to end."""
    proc = _start_run(config, subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.faults
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_resume_continues(
    uninterrupted: Path, tmp_path: Path, signum: int
) -> None:
    config = _resume_config(tmp_path, "signalled")
    out = tmp_path / "signalled"
    result = _signal_mid_run(config, out, signum)
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    name = signal.Signals(signum).name
    assert len(errors) == 1 and errors[0].startswith(f"error: stopped by {name} after step ")
    assert "Traceback" not in result.stderr and "Aborted!" not in result.stderr
    step = int(errors[0].split("after step ")[1].split(";")[0])
    assert 3 <= step < STEPS
    assert (out / "checkpoints" / f"checkpoint-{step}" / CHECKPOINT_MANIFEST).is_file()
    assert not (out / "model.safetensors").exists()  # the final model is not the result

    resumed = run_cli("train", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _losses(uninterrupted), _losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in expected:
        assert got[s] == pytest.approx(expected[s], abs=1e-6), s
