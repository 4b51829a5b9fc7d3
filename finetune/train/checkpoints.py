"""Checkpoints: which ones are complete, and whether a config may resume from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import OutputDirError
from finetune.train.output import RUN_INFO

# What the final save writes beside the run's own files; without run_info.json (written
# after it) they are the remains of a final save that was cut short.
FINAL_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
    "adapter_model.safetensors",
)

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
    _refuse_finished_run(out, current["train"].get("max_steps"))
    for name in FINAL_MODEL_FILES:  # a final save cut short must not be read back
        (out / name).unlink(missing_ok=True)
    checkpoint = latest_checkpoint(out / "checkpoints")
    if checkpoint is None:
        raise OutputDirError(
            f"--resume: no complete checkpoint under {out / 'checkpoints'} "
            "(set output.save_steps to write checkpoints)"
        )
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
