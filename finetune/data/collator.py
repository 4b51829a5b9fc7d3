"""Batch collation with padding that never touches the labels' meaning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

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
