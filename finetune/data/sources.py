"""Read data sources row by row, each row with the place it came from.

Local files are read here rather than through `datasets.load_dataset`, for two reasons:
a bad row must be reported with its file and line (pyarrow's JSON reader fails the whole
file on one malformed line, and counts no blank lines), and a CSV cell must stay text
(pandas would turn "42" into an int and the row would look mistyped). Hub datasets and
dataset directories go through `datasets`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from finetune.config.data import DatasetConfig
from finetune.errors import DataError

# A row and where it came from, e.g. ("data/train.jsonl:7", {...}).
Row = tuple[str, Any]

HUB_PROBE_TIMEOUT_S = 5.0
"""How long to wait for the Hub before calling it unreachable (datasets would otherwise
retry for half a minute or more, and hang on a network that drops packets)."""


def iter_rows(source: DatasetConfig) -> Iterator[Row]:
    """Yield `(location, row)` for every row of `source`, in file order.

    Locations are `file:line` (1-based) for .jsonl and .txt files and `file row N`
    (1-based, CSV header not counted) otherwise. A line that is not valid JSON is yielded
    as an `InvalidRow` so the caller reports it like any other bad row.

    Raises:
        DataError: the source is missing, of an unsupported type, or cannot be read.
    """
    path = Path(source.path).expanduser()
    if path.is_file():
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(
                f"data source {source.path}: unsupported file type {path.suffix!r}; "
                f"use one of {', '.join(READERS)}"
            )
        yield from reader(path, source)
    elif path.is_dir():
        yield from _hub_rows(source, _load_directory(source))
    elif path.suffix.lower() in READERS or source.path.startswith((".", "/", "~")):
        raise DataError(f"data source {source.path}: file not found")
    else:
        yield from _hub_rows(source, _load_hub(source))


class InvalidRow:
    """A row that could not even be parsed; carries the parser's message."""

    def __init__(self, message: str) -> None:
        self.message = message


def source_fingerprint(source: DatasetConfig) -> str | None:
    """A hash of the source's content, or None when it cannot be fingerprinted.

    Local files and directories are hashed by content (sha256), so a copy or a `touch`
    keeps the cache and any edit invalidates it. Hub datasets are fingerprinted by the
    names and sizes of the cached Arrow files `datasets` prepared, which encode the
    revision.
    """
    path = Path(source.path).expanduser()
    if path.is_file():
        return _sha256_files([path])
    if path.is_dir():
        return _sha256_files(sorted(p for p in path.rglob("*") if p.is_file()))
    dataset = _load_hub(source)
    files = [(f["filename"], os.path.getsize(f["filename"])) for f in dataset.cache_files]
    if not files:
        return None
    return hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.name).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# local files
# --------------------------------------------------------------------------------------


def _not_utf8(err: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{err.object[err.start]:02x}); save the file as UTF-8"


def _lines(path: Path) -> Iterator[tuple[int, str | InvalidRow]]:
    """`(number, line)` for each line of a text file, 1-based; a line that is not UTF-8
    comes as an InvalidRow, reported with the other bad rows."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, InvalidRow(_not_utf8(err))


def _read_jsonl(path: Path, source: DatasetConfig) -> Iterator[Row]:
    for number, line in _lines(path):
        where = f"{source.path}:{number}"
        if isinstance(line, InvalidRow):
            yield where, line
        elif line.strip():  # blank lines are not rows
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, InvalidRow(f"invalid JSON ({err.msg} at column {err.colno})")


def _read_json(path: Path, source: DatasetConfig) -> Iterator[Row]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{source.path}:{line}: {_not_utf8(err)}") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # a .json file holding JSON Lines
            yield from _read_jsonl(path, source)
            return
        raise DataError(
            f"{source.path}:{err.lineno}: invalid JSON ({err.msg}); a .json source must "
            "hold one list of records (or JSON Lines)"
        ) from None
    if not isinstance(records, list):
        raise DataError(
            f"data source {source.path}: expected a JSON list of records at the top level, "
            f"got {type(records).__name__}"
        )
    for number, record in enumerate(records, start=1):
        yield f"{source.path} row {number}", record


def _read_csv(path: Path, source: DatasetConfig) -> Iterator[Row]:
    number = 0
    with path.open(encoding="utf-8", newline="") as f:
        try:
            for number, record in enumerate(csv.DictReader(f), start=1):
                yield f"{source.path} row {number}", record
        except UnicodeDecodeError as err:
            raise DataError(
                f"data source {source.path}: after row {number}: {_not_utf8(err)}"
            ) from None


def _read_parquet(path: Path, source: DatasetConfig) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield f"{source.path} row {number}", record
    except (OSError, pa.ArrowException) as err:  # a damaged file is ArrowInvalid
        raise DataError(f"data source {source.path}: cannot be read as parquet: {err}") from None


def _read_txt(path: Path, source: DatasetConfig) -> Iterator[Row]:
    if source.format.type != "text":
        raise DataError(
            f"data source {source.path}: a .txt file holds plain lines, which only the text "
            f"format reads (format is {source.format.type!r}); use .jsonl for structured rows"
        )
    field = source.format.text_field
    for number, line in _lines(path):
        if isinstance(line, InvalidRow):
            yield f"{source.path}:{number}", line
        elif line.strip():
            yield f"{source.path}:{number}", {field: line.rstrip("\r\n")}


READERS: dict[str, Callable[[Path, DatasetConfig], Iterator[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}


# --------------------------------------------------------------------------------------
# datasets: directories and the Hub
# --------------------------------------------------------------------------------------


def _hub_rows(source: DatasetConfig, dataset: Any) -> Iterator[Row]:
    name = f"{source.path}[{source.split}]"
    for number, record in enumerate(dataset, start=1):
        yield f"{name} row {number}", record


def _load_directory(source: DatasetConfig) -> Any:
    import datasets

    path = Path(source.path).expanduser()
    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            return loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(str(path), source.subset, split=source.split)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"data source {source.path}: cannot be read as a dataset: {err}") from None


def hub_offline() -> bool:
    """Whether the user asked for offline mode (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(
        (v or "").upper() in {"1", "ON", "YES", "TRUE"} for v in flags
    )


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds.

    Runs in a thread because name resolution ignores socket timeouts.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = [False]

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass  # unreachable: result stays False

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0]


_HUB_DATASETS: dict[tuple[str, str | None, str], Any] = {}


def _load_hub(source: DatasetConfig) -> Any:
    key = (source.path, source.subset, source.split)
    if key not in _HUB_DATASETS:
        _HUB_DATASETS[key] = _load_hub_uncached(source)
    return _HUB_DATASETS[key]


def _load_hub_uncached(source: DatasetConfig) -> Any:
    import datasets

    offline = hub_offline()
    if not offline and not hub_reachable():
        from huggingface_hub import constants

        raise DataError(
            f"data source {source.path}: not a local file or directory, and the Hugging Face "
            f"Hub ({constants.ENDPOINT}) cannot be reached. Point path at local files, or set "
            "HF_HUB_OFFLINE=1 to use a copy in the local datasets cache."
        )
    try:
        return datasets.load_dataset(source.path, source.subset, split=source.split)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFound...)
        hint = (
            " (HF_HUB_OFFLINE is set: only datasets already in the local cache can load)"
            if offline
            else ""
        )
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"data source {source.path}: cannot be loaded{hint}: {first}") from None
