"""Exceptions for mistakes a user can fix. The CLI prints them without a traceback."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


class FinetuneError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""

    exit_code = 1


class ConfigError(FinetuneError):
    """The run configuration (file, overrides or values) is invalid."""

    exit_code = 2

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = errors or [message]
        super().__init__(message)


class PreflightError(FinetuneError):
    """The configuration is valid, but this machine or environment cannot run it."""

    exit_code = 2


class DataError(FinetuneError):
    """A data source or row cannot be used."""

    exit_code = 2


class OutputDirError(FinetuneError):
    """The output directory cannot be used as asked (it exists, or holds no checkpoint)."""

    exit_code = 2


class TrainingDiverged(FinetuneError):
    """The loss or gradient norm became NaN or infinite: the run stopped before saving it."""

    exit_code = 4


class Interrupted(FinetuneError):
    """SIGTERM or SIGINT stopped the run after a checkpoint; exit code 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        self.exit_code = 128 + signum
        super().__init__(message)


class StorageError(FinetuneError):
    """Reading or writing a file failed (a full disk, a permission, a missing directory)."""

    exit_code = 74  # EX_IOERR of sysexits.h


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries that lose the errno say it: safetensors (Rust), pyarrow, torch.save
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28")
_WRITE_FAILED_TEXT = ("file write failed", "PytorchStreamWriter failed")
NEARLY_FULL_BYTES = 64 << 20


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full(exc: BaseException, paths: Iterable[Path] = ()) -> Path | None:
    """If `exc` (or what caused it) is a full disk or quota, the path among `paths` on the
    full file system (or the first one when none can be told), else None.

    torch.save reports a failed write without the reason; it counts when one of `paths`
    is on a file system with under 64 MiB left.
    """
    paths = [Path(p) for p in paths]
    nearly_full = [p for p in paths if _free_bytes(p) < NEARLY_FULL_BYTES]
    for e in _chain(exc):
        text = str(e)
        full = isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS
        full = full or any(t in text for t in _DISK_FULL_TEXT)
        full = full or (any(t in text for t in _WRITE_FAILED_TEXT) and bool(nearly_full))
        if full:
            return (nearly_full or paths or [Path(getattr(e, "filename", None) or ".")])[0]
    return None


def _free_bytes(path: Path) -> int:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 1 << 62


def os_error_message(exc: BaseException) -> str | None:
    """One line for an OSError anywhere in `exc`'s chain (`PATH: reason`), else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror[0].lower() + e.strerror[1:]
            return f"{e.filename}: {reason}" if e.filename else reason
        if isinstance(e, OSError) and str(e):  # raised with a message alone (transformers)
            return str(e)
    return None
