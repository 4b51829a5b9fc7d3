"""Checkpoints: written complete or ignored, verified before a resume, and whether a config
may resume from them.

A checkpoint directory counts only once its manifest (`finetune_complete`) is on disk. The
manifest is written last, atomically (a temporary file renamed into place), after every rank
has written its files, and lists each file with its size and SHA-256. Deleting a checkpoint
removes the manifest first. A kill at any point therefore leaves either a checkpoint whose
files the manifest describes, or a directory that resume ignores; and since old checkpoints
are deleted only after the new one is sealed, there is always a complete one to go back to.
Resume checks the newest checkpoint's files against its manifest and falls back to the newest
one that passes, saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from finetune.errors import OutputDirError
from finetune.layout import CHECKPOINT_MANIFEST, CHECKPOINTS, METRICS, RUN_CONFIG, RUN_INFO
from finetune.train.output import (
    check_output_dir,
    finish_staged_save,
    forget_after,
    lock_output_dir,
)

if TYPE_CHECKING:
    from finetune.config.schema import RunConfig

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
DAMAGED_SUFFIX = ".damaged"

# Sections that define what is being trained: a resume that changes them would silently
# continue a different run. The train, logging and output sections may change.
FIXED_SECTIONS = ("model", "tokenizer", "data", "method")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(checkpoint: Path) -> int:
    """The step a `checkpoint-N` directory was saved at."""
    return int(checkpoint.name.removeprefix("checkpoint-"))


def _checkpoint_dirs(root: Path) -> list[Path]:
    """Every `checkpoint-N` directory under `root`, oldest first, sealed or not."""
    found = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and p.is_dir()
    ]
    return sorted(found, key=checkpoint_step)


def _sealed(dirs: list[Path]) -> list[Path]:
    """Those of `dirs` whose manifest is written, in the same order."""
    return [p for p in dirs if (p / CHECKPOINT_MANIFEST).is_file()]


def seal_checkpoint(checkpoint: Path, checksums: bool = True) -> None:
    """Write the manifest that makes `checkpoint` complete: every file with its size (and
    SHA-256 with `checksums`). Call it once every rank has written its part."""
    files = sorted(
        p
        for p in checkpoint.rglob("*")
        if p.is_file() and not p.name.startswith(CHECKPOINT_MANIFEST)
    )
    for path in files:  # the data, before the manifest that vouches for it
        with path.open("rb") as f:
            os.fsync(f.fileno())
    digests: list[str | None] = [None] * len(files)
    if checksums:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(_sha256, files))
    manifest = {
        "format": MANIFEST_FORMAT,
        "step": checkpoint_step(checkpoint),
        "files": {
            path.relative_to(checkpoint).as_posix(): {
                "size": path.stat().st_size,
                **({"sha256": digest} if digest else {}),
            }
            for path, digest in zip(files, digests, strict=True)
        },
    }
    tmp = checkpoint / f"{CHECKPOINT_MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, checkpoint / CHECKPOINT_MANIFEST)
    _fsync_dir(checkpoint)


def delete_checkpoint(checkpoint: Path) -> None:
    """Delete `checkpoint`, its manifest first: a kill part-way leaves a directory that no
    resume will take, never a "complete" checkpoint with files missing."""
    manifest = checkpoint / CHECKPOINT_MANIFEST
    if manifest.exists():
        manifest.unlink()
        _fsync_dir(checkpoint)
    shutil.rmtree(checkpoint, ignore_errors=True)


def rotate_checkpoints(root: Path, keep: int | None) -> None:
    """Keep the newest `keep` complete checkpoints (all with None); delete older ones and
    any unsealed directory older than the newest complete one (the remains of a kill)."""
    dirs = _checkpoint_dirs(root)
    complete = _sealed(dirs)
    if not complete:
        return
    newest = checkpoint_step(complete[-1])
    kept = set(complete[-keep:]) if keep else set(complete)
    for path in dirs:
        if path not in kept and checkpoint_step(path) < newest:
            delete_checkpoint(path)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest sealed checkpoint under `root`, or None (its files are not verified:
    `verify_checkpoint` does that).

    Half-written checkpoints (a run killed while saving) have no manifest and are skipped.
    """
    complete = _sealed(_checkpoint_dirs(root))
    return complete[-1] if complete else None


def verify_checkpoint(checkpoint: Path, checksums: bool = True) -> str | None:
    """What is wrong with `checkpoint`'s files against its manifest, or None if nothing."""
    try:
        text = (checkpoint / CHECKPOINT_MANIFEST).read_text()
    except OSError as e:
        return f"its manifest cannot be read ({e.strerror})"
    if not text.strip():
        return None  # sealed by finetune before manifests: nothing recorded to check
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict) or not files:
        return "its manifest is damaged"
    for name, record in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record["size"]:
            return f"{name} has {size} bytes, {record['size']} were saved"
    if checksums:
        for name, record in files.items():
            if "sha256" in record and _sha256(checkpoint / name) != record["sha256"]:
                return f"{name} does not match its checksum (the file changed after saving)"
    return None


def usable_checkpoint(root: Path, checksums: bool = True) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint whose files verify, and what was wrong with each newer
    one (as `checkpoint-N: reason`)."""
    rejected = []
    for path in reversed(_sealed(_checkpoint_dirs(root))):
        problem = verify_checkpoint(path, checksums)
        if problem is None:
            return path, rejected
        rejected.append(f"{path.name}: {problem}")
    return None, rejected


def set_aside_unusable(root: Path, chosen: Path | None) -> None:
    """Before a resumed run writes checkpoints again: rename damaged checkpoints newer than
    `chosen` to `checkpoint-N.damaged` (kept for inspection; resume never takes them) and
    delete unsealed ones, so that no later save mixes its files with theirs."""
    start = checkpoint_step(chosen) if chosen is not None else -1
    for path in _checkpoint_dirs(root):
        if checkpoint_step(path) <= start:
            continue
        if (path / CHECKPOINT_MANIFEST).is_file():
            aside = path.with_name(path.name + DAMAGED_SUFFIX)
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            logger.warning("%s was damaged: kept as %s", path.name, aside)
        else:
            shutil.rmtree(path, ignore_errors=True)


def open_output_dir(
    cfg: RunConfig, overwrite: bool, resume: bool, is_main: bool, barrier: Callable[[], None]
) -> Path | None:
    """Take the run's output directory, on every rank; with `resume`, return the checkpoint
    to resume from (the same on every rank), else None.

    The main rank locks the directory first; every rank checks it may be used as asked
    (`check_output_dir`) and, with --resume, the ranks agree on the newest intact
    checkpoint. Then the main rank sets aside what the resumed run would otherwise mix with
    (damaged or unsealed newer checkpoints, metrics of steps it will log again).
    """
    from finetune.distributed.launch import gather_per_rank

    out = Path(cfg.output.dir)
    if is_main:
        lock_output_dir(out)  # before anything looks at the directory; held to the end
        if resume and finish_staged_save(out):  # a final save the last run was moving
            print(
                f"[finetune] --resume: finished moving the final model into {out}",
                file=sys.stderr,
                flush=True,
            )
    check_output_dir(out, overwrite=overwrite, resume=resume)
    resume_from = None
    if resume:
        resume_from = resume_checkpoint(
            out,
            RUN_CONFIG,
            cfg.model_dump(mode="json"),
            checksums=cfg.output.checkpoint_checksums,
            is_main=is_main,
            agree=gather_per_rank,
        )
    barrier()  # every rank has looked at the directory before the main rank changes it
    if resume_from is not None and is_main:
        set_aside_unusable(out / CHECKPOINTS, resume_from)
        forget_after(out / METRICS, checkpoint_step(resume_from))
    return resume_from


def resume_checkpoint(
    out: Path,
    run_config_name: str,
    current: dict[str, Any],
    checksums: bool = True,
    is_main: bool = True,
    agree: Callable[[int], list[int]] = lambda step: [step],
) -> Path:
    """The checkpoint to resume from, after checking the config still describes the run:
    the newest complete one whose files match its manifest. Call it on every rank, with
    `agree` gathering a value from every rank (`gather_per_rank`) so they take the same one.

    Raises:
        OutputDirError: no complete checkpoint, or the model, tokenizer, data or method
            sections differ from the saved run config (the differing fields are named).
    """
    saved_path = out / run_config_name
    if not saved_path.is_file():
        raise OutputDirError(f"--resume: {out} holds no {run_config_name}; nothing to resume")
    saved = yaml.safe_load(saved_path.read_text())
    differences = [
        f"{path}: {before!r} -> {after!r}"
        for section in FIXED_SECTIONS
        for path, before, after in _diff(saved.get(section), current.get(section), section)
    ]
    if differences:
        raise OutputDirError(
            "--resume: the config changes what the run trains; resume with the original "
            "config or start a new output.dir. Differences:\n  " + "\n  ".join(differences)
        )
    # The earlier final model stays until the new one is saved whole (`staged_save`)
    _refuse_finished_run(out, current["train"].get("max_steps"))
    root = out / CHECKPOINTS
    # The main rank reads every file back against its checksum; the others check sizes
    # only, and every rank takes the oldest of the ranks' choices.
    checkpoint, rejected = usable_checkpoint(root, checksums and is_main)
    step = min(agree(checkpoint_step(checkpoint) if checkpoint is not None else -1))
    checkpoint = root / f"checkpoint-{step}" if step >= 0 else None
    if is_main:
        for reason in rejected:
            print(f"[finetune] --resume: skipping {reason}", file=sys.stderr, flush=True)
    if checkpoint is None:
        raise OutputDirError(
            f"--resume: no complete checkpoint under {root} "
            + (
                "whose files are intact"
                if rejected
                else "(set output.save_steps to write checkpoints)"
            )
        )
    if rejected and is_main:
        print(f"[finetune] --resume: resuming from {checkpoint.name}", file=sys.stderr, flush=True)
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    max_steps = current["train"].get("max_steps")
    if max_steps is not None and step >= max_steps:
        # transformers' Trainer would take one more step from a checkpoint at max_steps
        raise OutputDirError(
            f"--resume: {checkpoint.name} already reached train.max_steps ({max_steps}); the "
            "run's final save did not complete. Its weights are in "
            f"{checkpoint} (`finetune eval --model {checkpoint}` reads them); to train "
            f"further, resume with train.max_steps above {step}"
        )
    return checkpoint


def _refuse_finished_run(out: Path, max_steps: int | None) -> None:
    """A finished run (it wrote run_info.json) resumes only to train further."""
    info_path = out / RUN_INFO
    if not info_path.is_file():
        return
    try:
        done = int(json.loads(info_path.read_text())["global_step"])
    except (ValueError, KeyError, TypeError):
        raise OutputDirError(
            f"--resume: {info_path} is damaged; the run finished but its record cannot be "
            "read. Start a new output.dir (or --overwrite this one)"
        ) from None
    if max_steps is None or max_steps <= done:
        raise OutputDirError(
            f"--resume: the run in {out} already finished ({done} steps) and its final model "
            f"is saved. To train it further, resume with train.max_steps above {done} (the "
            "final model is then replaced); to start again, use --overwrite"
        )


def _diff(before: Any, after: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in _diff(before.get(k), after.get(k), f"{path}.{k}")]
    return [] if before == after else [(path, before, after)]
