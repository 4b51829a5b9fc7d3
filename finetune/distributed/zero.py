"""ZeRO-3 helpers: a partitioned model's parameters report their local shard's size."""

from __future__ import annotations

from torch import nn


def partitioned_parameter_counts(model: nn.Module) -> tuple[int, int] | None:
    """(trainable, total) full parameter counts of a ZeRO-3 partitioned model, or None when
    its parameters are not partitioned (their numel is then already the full size)."""
    params = list(model.parameters())
    if not params or not all(hasattr(p, "ds_numel") for p in params):
        return None
    trainable = sum(p.ds_numel for p in params if p.requires_grad)
    return trainable, sum(p.ds_numel for p in params)
