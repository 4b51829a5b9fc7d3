"""The output directory: refusing to clobber it, and the files a run leaves there."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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

    Nothing is deleted here: `replacing` does that, once the new run is built.

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


@contextmanager
def replacing(path: Path, overwrite: bool, is_main: bool) -> Iterator[None]:
    """Move an earlier run aside while a new one is set up in `path`; delete it only once the
    block has succeeded, and put it back if the block raises.

    With `--overwrite`, a config whose model or method cannot be built must not cost the
    user the earlier run. A process killed inside the block leaves the earlier run in
    `.NAME.replaced` beside `path`. Only the main process moves files; call it on every rank.
    """
    aside = path.with_name(f".{path.name}.replaced")
    moved = overwrite and is_main and path.exists()
    if moved:
        if aside.exists():
            shutil.rmtree(aside)
        path.rename(aside)
    if is_main:
        path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if moved:
            shutil.rmtree(path, ignore_errors=True)
            aside.rename(path)
        raise
    if moved:
        shutil.rmtree(aside)
