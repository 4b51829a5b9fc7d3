"""Schema sections for the tokenizer and the data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from finetune.config.base import Section

# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------


class TokenizerTrainConfig(Section):
    """Train a byte-level BPE tokenizer on the run's training text."""

    vocab_size: int = Field(4096, ge=300)
    """Vocabulary size, special tokens and the 256 byte tokens included."""

    min_frequency: int = Field(2, ge=1)
    """A pair must occur this often to be merged."""

    max_texts: int | None = Field(None, ge=1)
    """Train on at most this many training texts (all when None)."""


class TokenizerConfig(Section):
    """Where the tokenizer comes from."""

    name_or_path: str | None = None
    """A tokenizer directory or Hub id. Defaults to `model.name_or_path`."""

    train: TokenizerTrainConfig | None = None
    """Train a new tokenizer from the training data instead of loading one."""

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerConfig:
        if self.name_or_path is not None and self.train is not None:
            raise ValueError("set at most one of tokenizer.name_or_path and tokenizer.train")
        return self


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


class DatasetConfig(Section):
    """One data source."""

    path: str
    """A local .txt, .jsonl, .json, .csv or .parquet file."""

    format: Literal["text"] = "text"
    """`text`: raw language modelling; the loss covers every token of every row."""

    text_field: str = "text"
    """Column holding the text (a .txt file yields one row per line in `text`)."""


class DataConfig(Section):
    """Training and evaluation data."""

    train: list[DatasetConfig] = Field(min_length=1)
    """Training sources."""

    eval: list[DatasetConfig] = Field(default_factory=list)
    """Held-out sources for evaluation loss. Empty: split `eval_ratio` off the training data."""

    eval_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of training rows held out for evaluation when `eval` is empty (seeded)."""

    max_length: int = Field(512, ge=8)
    """Longest tokenized sample; longer rows are truncated on the right."""
