"""ZeRO-3 helpers: a partitioned model holds only its shard of each parameter on a rank."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def partitioned_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model` that ZeRO-3 has partitioned across the ranks."""
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


@contextmanager
def gathered_parameters(model: nn.Module) -> Iterator[None]:
    """Inside the block every parameter of `model` is whole on every rank (read only).

    Entered on every rank together (it gathers with a collective); a model that is not
    partitioned is left as it is.
    """
    params = partitioned_parameters(model)
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def held_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter elements this rank holds now: in the parameters' data, all and frozen
    ones (a ZeRO-3 parameter holds none outside its forward pass), and in this rank's
    ZeRO-3 shards."""
    params = list(model.parameters())
    return {
        "numel": sum(p.numel() for p in params),
        "frozen_numel": sum(p.numel() for p in params if not p.requires_grad),
        "shard_numel": sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")),
    }
