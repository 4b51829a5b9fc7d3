"""Data: sources, formats, tokenization with loss masks, caching, packing, collation."""

from finetune.data.collator import PackingCollator, PaddingCollator, build_collator
from finetune.data.packing import PackedDataset, first_fit_decreasing
from finetune.data.pipeline import (
    PreparedData,
    SourceReport,
    SourceStats,
    build_datasets,
    prepare_data,
    preprocess,
)
from finetune.data.summary import format_summary
from finetune.data.tokenizer import (
    build_tokenizer,
    load_tokenizer,
    train_tokenizer,
    train_tokenizer_with_report,
)

__all__ = [
    "PackedDataset",
    "PackingCollator",
    "PaddingCollator",
    "PreparedData",
    "SourceReport",
    "SourceStats",
    "build_collator",
    "build_datasets",
    "build_tokenizer",
    "first_fit_decreasing",
    "format_summary",
    "load_tokenizer",
    "prepare_data",
    "preprocess",
    "train_tokenizer",
    "train_tokenizer_with_report",
]
