"""The output directory: refusing to clobber it, and the files a run leaves there."""

from __future__ import annotations

import shutil
from pathlib import Path

from finetune.errors import OutputDirError

RUN_CONFIG = "run_config.yaml"
METRICS = "metrics.jsonl"
RUN_INFO = "run_info.json"
CHECKPOINTS = "checkpoints"
BASE_MODEL = "base_model"  # the random base of an adapter trained on a new model
MERGED = "merged"  # the adapter merged into its base (train.merge_adapter)


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to start in an existing, non-empty directory unless asked to.

    Nothing is deleted here: `clear_output_dir` does that, once the data has passed.

    Raises:
        OutputDirError: the directory exists and neither flag allows it, or `--overwrite`
            names a directory that a finetune run did not write.
    """
    if overwrite and resume:
        raise OutputDirError("--overwrite and --resume exclude each other; pick one")
    if not path.exists() or not any(path.iterdir()):
        if resume:
            raise OutputDirError(f"--resume: {path} holds no run to resume")
        return
    if not path.is_dir():
        raise OutputDirError(f"output.dir: {path} exists and is not a directory")
    if resume:
        return
    if not overwrite:
        raise OutputDirError(
            f"output.dir: {path} already exists and is not empty; pass --overwrite to "
            "replace it, --resume to continue its run, or choose another output.dir"
        )
    if not (path / RUN_CONFIG).is_file():
        raise OutputDirError(
            f"output.dir: {path} was not written by a finetune run (no {RUN_CONFIG}); "
            "--overwrite only replaces finetune outputs, choose another output.dir"
        )


def clear_output_dir(path: Path) -> None:
    """Empty a previous run's output directory (after `check_output_dir` allowed it)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
