"""Sample packing: several tokenized samples per row of `max_length` tokens.

Samples are assigned to rows by first-fit decreasing (longest first, each into the first
row with room; no sample is split), which on realistic length distributions fills rows to
well above 95%. The rows keep their samples apart: `PackingCollator` (collator.py) gives
each sample position ids that restart at 0 and sends no attention mask, from which
transformers' masking utilities build a block-diagonal causal mask (only when no KV cache
is passed: training runs with `use_cache=False`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins holding at most `capacity` in total.

    First-fit decreasing in O(n log n): a max-segment-tree over the bins' free space finds
    the first bin with room for each item.

    Args:
        lengths: the size of each item; none may exceed `capacity`.
        capacity: the size of a bin.

    Returns:
        Bins as lists of item indices, in the order the bins were opened.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    assert not too_long, f"items longer than the bin capacity {capacity}: {too_long[:5]}"
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    # tree[node] = the most free space in any bin under node; leaves size..2*size-1 are
    # bins, unopened ones empty, so there is always a leaf with room.
    free = [capacity] * (2 * size)
    bins: list[list[int]] = []
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        need = lengths[item]
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(item)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


class PackedDataset(torch.utils.data.Dataset):
    """Rows of packed samples over a tokenized dataset; an item is the list of its samples.

    Args:
        samples: a dataset with `input_ids`, `labels` and `length` columns.
        capacity: tokens per row (`data.max_length`).
    """

    def __init__(self, samples: Any, capacity: int) -> None:
        self.samples = samples
        self.capacity = capacity
        lengths = list(samples["length"])
        self.bins = first_fit_decreasing(lengths, capacity)
        self.tokens = sum(lengths)

    @property
    def efficiency(self) -> float:
        """Share of the rows' `capacity` positions that hold sample tokens (not padding)."""
        return self.tokens / max(len(self.bins) * self.capacity, 1)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[dict[str, list[int]]]:
        rows = self.samples[self.bins[index]]
        return [
            {"input_ids": ids, "labels": labels}
            for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True)
        ]
