"""The output directory: refusing to clobber it, and the files a run leaves there."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from finetune.errors import OutputDirError
from finetune.layout import (  # noqa: F401  (the names other train modules take from here)
    BASE_MODEL,
    CHECKPOINTS,
    MERGED,
    METRICS,
    MODEL_FILE_PATTERNS,
    RUN_CONFIG,
    RUN_INFO,
    STAGED,
    STAGING,
)

_held_locks: dict[Path, TextIO] = {}


def lock_path(path: Path) -> Path:
    """The lock file of output directory `path`: `.NAME.lock` beside it, so that it outlives
    the directory being moved aside by --overwrite (inside it only where the parent cannot
    be written)."""
    parent = path.parent
    if parent.is_dir() and not os.access(parent, os.W_OK) and path.is_dir():
        return path / ".finetune.lock"
    return parent / f".{path.name}.lock"


def lock_output_dir(path: Path) -> None:
    """Take the run's exclusive lock on output directory `path`, held until the process
    exits or `unlock_output_dir`. Call it on the job's main rank only, before anything
    looks at or changes the directory: the other ranks and nodes of the job work under it.

    The lock is `flock` on the lock file (released by the kernel when the process dies,
    kill -9 included, so it is never stale); the holder's host, pid and command are written
    into the file for whoever finds it taken.

    Raises:
        OutputDirError: another run holds the lock, or the lock file cannot be created.
    """
    key = path.absolute()
    if key in _held_locks:
        return
    lock = lock_path(key)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = lock.open("a+")
    except OSError as e:
        raise OutputDirError(
            f"output.dir: cannot create the lock file {lock} ({e.strerror}); choose an "
            "output.dir in a directory you can write"
        ) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        try:
            who = json.loads(holder)
            owner = f"pid {who['pid']} on {who['host']}, started {who['started']}"
        except (ValueError, KeyError, TypeError):
            owner = "another process"
        raise OutputDirError(
            f"output.dir: {path} is in use by another run ({owner}); wait for it to end, "
            "or choose another output.dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv),
            }
        )
        + "\n"
    )
    f.flush()
    _held_locks[key] = f


def unlock_output_dir(path: Path) -> None:
    """Release the lock `lock_output_dir` took (a no-op if this process holds none)."""
    f = _held_locks.pop(path.absolute(), None)
    if f is not None:
        f.close()  # closing the last descriptor releases the flock


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to start in an existing, non-empty directory unless asked to.

    Nothing is deleted here: `replacing` does that, once the new run is built.

    Raises:
        OutputDirError: the directory exists and neither flag allows it, or `--overwrite`
            names a directory that a finetune run did not write.
    """
    if overwrite and resume:
        raise OutputDirError("--overwrite and --resume exclude each other; pick one")
    if path.exists() and not path.is_dir():
        raise OutputDirError(
            f"output.dir: {path} exists and is not a directory; choose another output.dir"
        )
    if not path.exists() or not any(path.iterdir()):
        if resume:
            raise OutputDirError(f"--resume: {path} holds no run to resume")
        return
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


@contextmanager
def staged_save(out: Path, is_main: bool) -> Iterator[Path]:
    """Yield a directory to save the final model in; once the block succeeds, list its files
    in STAGED and move them into `out` (`finish_staged_save`); if it raises, delete it.

    A save cut short (a full disk, a kill) never leaves `out` with a `config.json` whose
    weights are missing, nor the earlier model's weights under the new config: before
    STAGED exists the earlier final model (if any) is untouched, and after it the move is
    finished by whichever run takes the directory next. Call it on every rank; only the
    main process moves files.
    """
    staging = out / STAGING
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)  # the remains of a killed save
    try:
        yield staging
    except BaseException:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_main:
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        for name in files:
            _fsync(staging / name)
        tmp = staging / f"{STAGED}.tmp"
        tmp.write_text(json.dumps({"files": files}))
        _fsync(tmp)
        os.replace(tmp, staging / STAGED)
        finish_staged_save(out)


def finish_staged_save(out: Path) -> bool:
    """Finish a final save in `out`: move a complete staged save (one that wrote STAGED)
    into place, removing the earlier model's files that it does not replace, and return
    True; drop an incomplete one, which leaves the earlier model as it was, and return
    False. Safe to repeat after a kill at any point. Only for the holder of the output
    directory's lock."""
    staging = out / STAGING
    if not staging.is_dir():
        return False
    try:
        files = set(json.loads((staging / STAGED).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(staging)  # cut short before every file was written
        return False
    for pattern in MODEL_FILE_PATTERNS:
        for old in out.glob(pattern):
            if old.is_file() and old.name not in files:
                old.unlink()
    for name in sorted(files, key=lambda n: len(Path(n).parts)):
        source, target = staging / name, out / name
        if source.is_file():  # else moved before the kill
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    shutil.rmtree(staging)
    return True


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def forget_after(path: Path, step: int) -> None:
    """Drop the records of steps after `step` from a metrics file: a resumed run logs those
    steps again, and a step must appear once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
