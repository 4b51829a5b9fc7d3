"""Read data sources into `datasets.Dataset` objects."""

from __future__ import annotations

from pathlib import Path

import datasets

from finetune.config.data import DatasetConfig
from finetune.errors import DataError

# File suffix -> datasets' packaged builder.
BUILDERS = {
    ".txt": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def load_source(source: DatasetConfig) -> datasets.Dataset:
    """Load one local file as a Dataset, one row per line/record.

    Raises:
        DataError: the file is missing, has an unsupported suffix or cannot be parsed.
    """
    path = Path(source.path)
    if not path.is_file():
        raise DataError(f"data source {source.path}: file not found")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"data source {source.path}: unsupported file type {path.suffix!r}; "
            f"use one of {', '.join(BUILDERS)}"
        )
    try:
        return datasets.load_dataset(builder, data_files=str(path.resolve()), split="train")
    except Exception as err:  # datasets raises many types; the cause is kept
        raise DataError(f"data source {source.path}: cannot be read: {err}") from err
