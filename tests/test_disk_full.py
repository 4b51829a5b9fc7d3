"""A full disk is one message, never a half-saved model or a stray cache directory, and the
run resumes once there is space. Each test mounts a small tmpfs (root only; CI runs as root).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune.train.checkpoints import latest_checkpoint, verify_checkpoint
from tests.test_reliability import QUICK, _one_error

from .conftest import run_cli

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[callable]:
    """`small_disk(mb)` mounts a tmpfs of `mb` MiB and returns its path; unmounted after."""
    mounted: list[Path] = []

    def mount(mb: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root needed): {result.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _disk_full_message(result) -> str:
    assert result.returncode == 74, result.stderr[-3000:]
    message = _one_error(result)
    assert "no space left on device" in message, message
    return message


def test_full_disk_during_checkpoints_then_resume(small_disk, tmp_path: Path) -> None:
    disk = small_disk(40)  # the run's files and one checkpoint fit, a second does not
    out = disk / "out"
    args = [*QUICK, "--set", "output.save_steps=4", "--set", f"output.dir={out}"]
    result = run_cli("train", *args)
    message = _disk_full_message(result)
    assert str(disk) in message or "checkpoint" in message, message
    newest = latest_checkpoint(out / "checkpoints")
    assert newest is not None and verify_checkpoint(newest) is None  # sealed ones are whole
    assert not (out / "config.json").exists()

    subprocess.run(["mount", "-o", "remount,size=400m", str(disk)], check=True)
    result = run_cli("train", *args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 24


def test_full_disk_at_the_final_save_leaves_no_half_model(small_disk) -> None:
    disk = small_disk(4)  # the run config and tokenizer fit, the 8 MB model does not
    out = disk / "out"
    result = run_cli("train", *QUICK, "--set", "train.max_steps=2", "--set", f"output.dir={out}")
    _disk_full_message(result)
    assert (out / "run_config.yaml").is_file()
    leftovers = {p.name for p in out.iterdir()}
    assert not leftovers & {"config.json", "model.safetensors", ".saving"}, leftovers


def test_full_data_cache_leaves_no_temporary_entry(small_disk, tmp_path: Path) -> None:
    cache = small_disk(1)  # the tokenized training set is several MB
    result = run_cli(
        "train",
        *QUICK,
        *("--set", f"data.cache_dir={cache}", "--set", f"output.dir={tmp_path / 'out'}"),
    )
    _disk_full_message(result)
    assert os.listdir(cache) == []
