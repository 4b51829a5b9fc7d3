"""The tokenized-data cache: one directory per key, published atomically.

A cache entry is `<root>/<key>/` holding `data.arrow` (an Arrow stream of samples,
memory-mapped when read: `input_ids`, `labels` and `length`; for preference pairs
`prompt_ids`, `chosen_ids`, `rejected_ids` and `length`; for feedback `prompt_ids`,
`completion_ids`, `label` and `length`) and `meta.json` (the source's row statistics).
It is written under a temporary name in the same directory and renamed into place, so a
reader sees a complete entry or none, and two processes that tokenize the same source at
once both succeed (the second rename loses and its copy is deleted). In a multi-process
run the runner lets rank 0 go first, so the other ranks only read.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

CACHE_VERSION = 1
"""Bump when the stored layout or the tokenization rules change."""

DATA_FILE = "data.arrow"
META_FILE = "meta.json"

SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),
    ]
)
"""A sample that trains on its own tokens: ids, per-id labels (-100: no loss), length."""

PAIR_SCHEMA = pa.schema(
    [
        ("prompt_ids", pa.list_(pa.int32())),
        ("chosen_ids", pa.list_(pa.int32())),
        ("rejected_ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
    ]
)
"""A preference pair: the prompt's ids, each answer's ids after it, and the longer of the
two sequences' length."""

FEEDBACK_SCHEMA = pa.schema(
    [
        ("prompt_ids", pa.list_(pa.int32())),
        ("completion_ids", pa.list_(pa.int32())),
        ("label", pa.bool_()),
        ("length", pa.int32()),
    ]
)
"""A feedback row: the prompt's ids, the answer's ids after it, whether the answer is
desirable, and the sequence's length."""


PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_ids", pa.list_(pa.int32())),
        ("prompt", pa.string()),
        ("extras", pa.string()),
        ("length", pa.int32()),
    ]
)
"""A prompt-only row: the prompt's ids, the prompt and the row's other fields (JSON, as
the reward functions get them), and the prompt's length."""


def cache_root(cache_dir: str | None) -> Path:
    """`cache_dir`, else `$FINETUNE_CACHE/data`, else `~/.cache/finetune/data`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("FINETUNE_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "finetune") / "data"


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of everything that decides the tokenized rows."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_entry(root: Path, key: str) -> tuple[datasets.Dataset, dict[str, Any]] | None:
    """The cached dataset and its statistics, or None when there is no complete entry."""
    entry = root / key
    try:
        meta = json.loads((entry / META_FILE).read_text())
        return datasets.Dataset.from_file(str(entry / DATA_FILE)), meta
    except (OSError, ValueError):
        return None


class EntryWriter:
    """Write tokenized rows in batches, then publish them as a cache entry.

    Args:
        root: the cache root, or None to write to a private temporary directory that is
            removed when the process exits (caching disabled).
        key: the entry's key (ignored without `root`).
        schema: the columns of a row: `SCHEMA`, `PAIR_SCHEMA`, `FEEDBACK_SCHEMA` or
            `PROMPT_SCHEMA`.
    """

    def __init__(
        self, root: Path | None, key: str, batch_rows: int = 1000, schema: pa.Schema = SCHEMA
    ) -> None:
        if root is None:
            self.final = None
            self.tmp = Path(tempfile.mkdtemp(prefix="finetune-data-"))
            atexit.register(shutil.rmtree, self.tmp, True)
        else:
            root.mkdir(parents=True, exist_ok=True)
            self.final = root / key
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.tmp-", dir=root))
        self._sink = pa.OSFile(str(self.tmp / DATA_FILE), "wb")
        self._schema = schema
        self._writer = pa.ipc.new_stream(self._sink, schema)
        self._batch_rows = batch_rows
        self._rows: dict[str, list[Any]] = {name: [] for name in schema.names}

    def add(self, input_ids: list[int], labels: list[int]) -> None:
        """Append one tokenized sample (`SCHEMA`)."""
        self._append(input_ids=input_ids, labels=labels, length=len(input_ids))

    def add_pair(self, prompt: list[int], chosen: list[int], rejected: list[int]) -> None:
        """Append one preference pair (`PAIR_SCHEMA`)."""
        length = len(prompt) + max(len(chosen), len(rejected))
        self._append(prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected, length=length)

    def add_feedback(self, prompt: list[int], completion: list[int], label: bool) -> None:
        """Append one feedback row (`FEEDBACK_SCHEMA`)."""
        length = len(prompt) + len(completion)
        self._append(prompt_ids=prompt, completion_ids=completion, label=label, length=length)

    def add_prompt(self, prompt_ids: list[int], prompt: str, extras: str) -> None:
        """Append one prompt-only row (`PROMPT_SCHEMA`)."""
        self._append(prompt_ids=prompt_ids, prompt=prompt, extras=extras, length=len(prompt_ids))

    def _append(self, **row: Any) -> None:
        for name, value in row.items():
            self._rows[name].append(value)
        if len(self._rows["length"]) >= self._batch_rows:
            self._flush()

    def finish(self, meta: dict[str, Any]) -> datasets.Dataset:
        """Close the file, publish the entry and return it as a memory-mapped Dataset."""
        self._flush()
        self._writer.close()
        self._sink.close()
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        where = self.tmp
        if self.final is not None:
            try:
                os.rename(self.tmp, self.final)
            except OSError:  # another process published the same entry first
                shutil.rmtree(self.tmp, ignore_errors=True)
            where = self.final
        return datasets.Dataset.from_file(str(where / DATA_FILE))

    def abort(self) -> None:
        """Drop a partly written entry (an error stopped the source, or the disk is full)."""
        # On a full disk the close fails like the write did; the files go either way
        with contextlib.suppress(Exception):
            self._writer.close()
            self._sink.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _flush(self) -> None:
        if self._rows["length"]:
            batch = pa.RecordBatch.from_pydict(self._rows, schema=self._schema)
            self._writer.write_batch(batch)
            self._rows = {name: [] for name in self._schema.names}
