"""Batch collation with padding that never touches the labels' meaning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from finetune.config.data import DataConfig

IGNORE_INDEX = -100


@dataclass
class PaddingCollator:
    """Right-pad `input_ids` and `labels` to the longest sample in the batch.

    Padding positions are found from each sample's length, never by comparing ids with
    the pad id: tokenizers whose pad token is also their end-of-sequence token would
    otherwise lose every end-of-sequence label.
    """

    pad_token_id: int

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = torch.as_tensor(sample["input_ids"])
            labels[row, :n] = torch.as_tensor(sample["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@dataclass
class PackingCollator:
    """Concatenate each row's samples; position ids restart at 0 for every sample.

    Each item is a list of samples (a `PackedDataset` row) or a single sample. No
    attention mask is returned: transformers then derives a block-diagonal causal mask
    from the position ids, so samples never attend to each other (the model must run
    with `use_cache=False`). The first label of every sample is ignored, as it is when
    the sample runs alone: otherwise the previous sample's last token would be trained to
    predict it. Rows shorter than the batch's longest are padded with a block of pad
    tokens whose positions also restart at 0 and whose labels are ignored.
    """

    pad_token_id: int

    def __call__(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        packed = [self._concatenate([row] if isinstance(row, dict) else row) for row in rows]
        longest = max(len(ids) for ids, _, _ in packed)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, (ids, row_labels, positions) in enumerate(packed):
            n = len(ids)
            input_ids[row, :n] = torch.as_tensor(ids)
            labels[row, :n] = torch.as_tensor(row_labels)
            position_ids[row, :n] = torch.as_tensor(positions)
            position_ids[row, n:] = torch.arange(longest - n)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

    @staticmethod
    def _concatenate(samples: list[dict[str, Any]]) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for sample in samples:
            n = len(sample["input_ids"])
            ids.extend(sample["input_ids"])
            labels.append(IGNORE_INDEX)
            labels.extend(sample["labels"][1:])
            positions.extend(range(n))
        return ids, labels, positions


def build_collator(cfg: DataConfig, pad_token_id: int) -> PaddingCollator | PackingCollator:
    """The collator for the data section: packing rows when `data.packing`, else padding."""
    return PackingCollator(pad_token_id) if cfg.packing else PaddingCollator(pad_token_id)


@dataclass
class MaskedLMCollator:
    """Pad, then mask 15% of the non-special tokens for the masked-LM objective (BERT's
    80% [MASK] / 10% random / 10% unchanged), through transformers' own collator.

    The format's labels are ignored: masked-LM labels are the masked-out tokens.
    """

    tokenizer: PreTrainedTokenizerBase
    mlm_probability: float = 0.15
    seed: int | None = None

    def __post_init__(self) -> None:
        self._mlm = DataCollatorForLanguageModeling(
            self.tokenizer, mlm=True, mlm_probability=self.mlm_probability, seed=self.seed
        )
        self._special = set(self.tokenizer.all_special_ids)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [
            {
                "input_ids": s["input_ids"],
                "special_tokens_mask": [int(i in self._special) for i in s["input_ids"]],
            }
            for s in samples
        ]
        return self._mlm(features)


@dataclass
class Seq2SeqCollator:
    """Split each sample at its first trained token: the prompt goes to the encoder, the
    trained part (answer and EOS) becomes the decoder's labels. Both are right-padded by
    length; the model shifts the labels into decoder inputs itself."""

    pad_token_id: int

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sources, targets = [], []
        for sample in samples:
            labels = sample["labels"]
            start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
            sources.append(sample["input_ids"][:start] or [self.pad_token_id])
            targets.append([label for label in labels[start:] if label != IGNORE_INDEX])
        input_ids = _pad(sources, self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": _pad([[1] * len(s) for s in sources], 0),
            "labels": _pad(targets, IGNORE_INDEX),
        }


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad `rows` to the longest with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


@dataclass
class ClassificationCollator:
    """Right-pad the texts; each sample's single label is its class index."""

    pad_token_id: int

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [s["input_ids"] for s in samples]
        return {
            "input_ids": _pad(rows, self.pad_token_id),
            "attention_mask": _pad([[1] * len(r) for r in rows], 0),
            "labels": torch.tensor([s["labels"][0] for s in samples], dtype=torch.long),
        }
