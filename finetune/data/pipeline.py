"""From the data section to tokenized train and eval datasets."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import datasets
from transformers import PreTrainedTokenizerBase

from finetune.config.data import DataConfig, DatasetConfig
from finetune.data.formats import tokenize_text
from finetune.data.sources import load_source
from finetune.errors import DataError


def iter_training_texts(cfg: DataConfig, limit: int | None = None) -> Iterator[str]:
    """Plain text of the training sources, for tokenizer training."""
    count = 0
    for source in cfg.train:
        for row in load_source(source):
            if limit is not None and count >= limit:
                return
            yield row[source.text_field]
            count += 1


def build_datasets(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Tokenize the training (and evaluation) sources.

    Returns:
        The training set and the evaluation set (None when there is no evaluation data),
        each with `input_ids` and `labels` columns.
    """
    train = _tokenize_sources(cfg.train, tokenizer, cfg.max_length)
    if cfg.eval:
        return train, _tokenize_sources(cfg.eval, tokenizer, cfg.max_length)
    if cfg.eval_ratio > 0:
        split = train.train_test_split(test_size=cfg.eval_ratio, seed=seed)
        return split["train"], split["test"]
    return train, None


def _tokenize_sources(
    sources: list[DatasetConfig], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> datasets.Dataset:
    parts = [_tokenize_source(s, tokenizer, max_length) for s in sources]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _tokenize_source(
    source: DatasetConfig, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> datasets.Dataset:
    rows = load_source(source)
    if source.text_field not in rows.column_names:
        raise DataError(
            f"data source {source.path}: no column {source.text_field!r} "
            f"(columns: {', '.join(rows.column_names)}); set text_field"
        )
    rows = rows.filter(lambda row: bool(row[source.text_field] and row[source.text_field].strip()))
    if len(rows) == 0:
        raise DataError(f"data source {source.path}: no non-empty rows")
    fn = partial(
        tokenize_text, tokenizer=tokenizer, text_field=source.text_field, max_length=max_length
    )
    return rows.map(fn, remove_columns=rows.column_names, desc=f"tokenizing {source.path}")
