"""A checkpoint is complete or ignored: sealed last, deleted manifest first, verified before
resume. The end-to-end resume from a damaged checkpoint is in test_resume.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from finetune.errors import OutputDirError
from finetune.layout import STAGED, STAGING, save_being_moved
from finetune.train.checkpoints import (
    CHECKPOINT_MANIFEST,
    resume_checkpoint,
    rotate_checkpoints,
    seal_checkpoint,
    set_aside_unusable,
    usable_checkpoint,
    verify_checkpoint,
)
from finetune.train.output import finish_staged_save, forget_after, staged_save
from tests.conftest import REPO

pytestmark = pytest.mark.faults

FILES = {
    "model.safetensors": b"w" * 4096,
    "optimizer.pt": b"o" * 8192,
    "scheduler.pt": b"s" * 100,
    "trainer_state.json": b'{"global_step": 1}',
    "global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"z" * 300,
}


def make_checkpoint(root: Path, step: int, seal: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    for name, data in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    if seal:
        seal_checkpoint(path)
    return path


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 4)
    manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    assert manifest["step"] == 4
    assert set(manifest["files"]) == set(FILES)  # nested DeepSpeed shards included
    assert manifest["files"]["optimizer.pt"]["size"] == 8192
    assert len(manifest["files"]["optimizer.pt"]["sha256"]) == 64
    assert not list(path.glob("*.tmp"))
    assert verify_checkpoint(path) is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda p: (p / "scheduler.pt").unlink(), "scheduler.pt is missing"),
        (
            lambda p: (p / "global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
            "zero_pp_rank_1_mp_rank_00_optim_states.pt is missing",
        ),
        (
            lambda p: (p / "model.safetensors").write_bytes(b"w" * 1000),
            "model.safetensors has 1000 bytes, 4096 were saved",
        ),
        (
            lambda p: (p / "model.safetensors").write_bytes(b"w" * 2048 + b"x" + b"w" * 2047),
            "model.safetensors does not match its checksum",
        ),
        (lambda p: (p / CHECKPOINT_MANIFEST).write_text('{"files": '), "its manifest is damaged"),
    ],
    ids=["optimizer", "scheduler", "zero-shard", "truncated", "bit-flip", "manifest"],
)
def test_damage_is_found(tmp_path: Path, damage, reason: str) -> None:
    path = make_checkpoint(tmp_path, 4)
    damage(path)
    assert reason in verify_checkpoint(path)


def test_without_checksums_sizes_are_still_checked(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 4)
    (path / "model.safetensors").write_bytes(b"x" * 4096)
    assert verify_checkpoint(path, checksums=False) is None
    (path / "model.safetensors").write_bytes(b"x" * 4095)
    assert "4095 bytes" in verify_checkpoint(path, checksums=False)


def test_a_checkpoint_sealed_before_manifests_is_accepted(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 4, seal=False)
    (path / CHECKPOINT_MANIFEST).write_text("")  # what finetune wrote before manifests
    assert verify_checkpoint(path) is None


def test_the_newest_intact_checkpoint_is_taken(tmp_path: Path) -> None:
    for step in (4, 8, 12):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 16, seal=False)  # a kill while saving
    (tmp_path / "checkpoint-12" / "scheduler.pt").unlink()
    chosen, rejected = usable_checkpoint(tmp_path)
    assert chosen == tmp_path / "checkpoint-8"
    assert rejected == ["checkpoint-12: scheduler.pt is missing"]

    set_aside_unusable(tmp_path, chosen)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-12.damaged", "checkpoint-4", "checkpoint-8"]


def test_rotation_deletes_only_once_the_new_checkpoint_is_sealed(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 4)
    make_checkpoint(tmp_path, 8, seal=False)  # being written
    rotate_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    seal_checkpoint(tmp_path / "checkpoint-8")
    rotate_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]


def test_kill_during_rotation_leaves_no_half_checkpoint_that_counts(tmp_path: Path) -> None:
    """SIGKILL from inside the deletion of an old checkpoint (after its first file went):
    the old one no longer counts, the new one does, and the new one verifies."""
    for step in (4, 8):
        make_checkpoint(tmp_path, step)
    script = textwrap.dedent(
        f"""
        import os, shutil, signal
        from pathlib import Path
        from finetune.train import checkpoints

        def rmtree(path, ignore_errors=False):
            (Path(path) / "optimizer.pt").unlink()
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoints.shutil.rmtree = rmtree
        checkpoints.rotate_checkpoints(Path({str(tmp_path)!r}), keep=1)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    old = tmp_path / "checkpoint-4"
    assert old.is_dir() and not (old / CHECKPOINT_MANIFEST).exists()  # the manifest went first
    chosen, rejected = usable_checkpoint(tmp_path)
    assert chosen == tmp_path / "checkpoint-8" and rejected == []
    rotate_checkpoints(tmp_path, keep=1)  # the next save's rotation clears the remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]


def test_resume_says_which_checkpoint_it_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run_config.yaml").write_text("model: {}\n")
    root = tmp_path / "checkpoints"
    for step in (4, 8):
        make_checkpoint(root, step)
    (root / "checkpoint-8" / "optimizer.pt").unlink()
    current = {"model": {}, "train": {"max_steps": 20}}
    assert resume_checkpoint(tmp_path, "run_config.yaml", current) == root / "checkpoint-4"
    err = capsys.readouterr().err
    assert "skipping checkpoint-8: optimizer.pt is missing" in err
    assert "resuming from checkpoint-4" in err

    (root / "checkpoint-4" / "model.safetensors").write_bytes(b"")
    with pytest.raises(OutputDirError, match=r"no complete checkpoint .* whose files are intact"):
        resume_checkpoint(tmp_path, "run_config.yaml", current)


def test_ranks_take_the_oldest_of_their_choices(tmp_path: Path) -> None:
    (tmp_path / "run_config.yaml").write_text("model: {}\n")
    root = tmp_path / "checkpoints"
    for step in (4, 8):
        make_checkpoint(root, step)
    current = {"model": {}, "train": {"max_steps": 20}}
    chosen = resume_checkpoint(
        tmp_path, "run_config.yaml", current, agree=lambda step: [step, 4], is_main=False
    )
    assert chosen == root / "checkpoint-4"


def test_metrics_of_replayed_steps_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 9)))
    forget_after(path, 5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]


def _final_model(out: Path, weights: bytes, shards: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text('{"model_type": "decoder"}')
    if shards:
        for i in range(1, shards + 1):
            (out / f"model-0000{i}-of-0000{shards}.safetensors").write_bytes(weights)
        (out / "model.safetensors.index.json").write_text("{}")
    else:
        (out / "model.safetensors").write_bytes(weights)


def test_a_final_save_moves_in_whole_and_replaces_the_earlier_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _final_model(out, b"old", shards=2)  # an earlier final save, sharded
    (out / "run_config.yaml").write_text("mine")
    with staged_save(out, is_main=True) as staging:
        _final_model(staging, b"new")
        assert not (out / "model.safetensors").exists()  # nothing moves before the end
    assert (out / "model.safetensors").read_bytes() == b"new"
    # the earlier shards and their index would be loaded instead of the new weights
    assert not list(out.glob("model-*")) and not (out / "model.safetensors.index.json").exists()
    assert (out / "run_config.yaml").read_text() == "mine" and not (out / STAGING).exists()


def test_a_failed_final_save_leaves_the_earlier_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _final_model(out, b"old")
    with pytest.raises(OSError), staged_save(out, is_main=True) as staging:
        _final_model(staging, b"new")
        raise OSError(28, "No space left on device")
    assert (out / "model.safetensors").read_bytes() == b"old" and not (out / STAGING).exists()


def test_a_move_cut_short_is_finished_and_an_unfinished_save_dropped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _final_model(out, b"old", shards=2)
    staging = out / STAGING
    _final_model(staging, b"new")
    (staging / STAGED).write_text(json.dumps({"files": ["config.json", "model.safetensors"]}))
    (staging / "config.json").replace(out / "config.json")  # killed after the first move
    assert save_being_moved(out)
    assert finish_staged_save(out)
    assert (out / "model.safetensors").read_bytes() == b"new"
    assert not list(out.glob("model-*")) and not staging.exists() and not save_being_moved(out)
    assert finish_staged_save(out) is False  # nothing left to do

    _final_model(staging, b"newer")  # killed while saving: no STAGED list yet
    assert not save_being_moved(out)
    assert finish_staged_save(out) is False
    assert (out / "model.safetensors").read_bytes() == b"new" and not staging.exists()
