"""Checkpoints: which ones are complete, and whether a config may resume from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from finetune.errors import OutputDirError

COMPLETE = "finetune_complete"

# Sections that define what is being trained: a resume that changes them would silently
# continue a different run. The train, logging and output sections may change.
FIXED_SECTIONS = ("model", "tokenizer", "data", "method")


def mark_complete(checkpoint: Path) -> None:
    """Write the marker that says every file of `checkpoint` is on disk."""
    (checkpoint / COMPLETE).write_text("")


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None.

    Half-written checkpoints (a run killed while saving) have no marker and are skipped.
    """
    complete = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / COMPLETE).is_file()
    ]
    return max(complete, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def resume_checkpoint(out: Path, run_config_name: str, current: dict[str, Any]) -> Path:
    """The checkpoint to resume from, after checking the config still describes the run.

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
    checkpoint = latest_checkpoint(out / "checkpoints")
    if checkpoint is None:
        raise OutputDirError(
            f"--resume: no complete checkpoint under {out / 'checkpoints'} "
            "(set output.save_steps to write checkpoints)"
        )
    return checkpoint


def _diff(before: Any, after: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in _diff(before.get(k), after.get(k), f"{path}.{k}")]
    return [] if before == after else [(path, before, after)]
