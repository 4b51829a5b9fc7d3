"""The process group: started once per rank, with the run's timeout."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from finetune.config.schema import DistributedConfig


def launched_world_size() -> int:
    """The number of ranks a launcher (deepspeed, torchrun, srun wrapper) started; 1 alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(cfg: DistributedConfig) -> None:
    """Start the process group for a launched DeepSpeed run, with `cfg.timeout_s`.

    It must exist before a ZeRO-3 model is built (parameters are partitioned as they are
    created) and before accelerate starts one with its own default timeout. The timeout is
    what ends a job whose rank hangs: every collective waiting on it fails after
    `timeout_s`, the rank exits non-zero and the launcher stops the others.
    """
    import torch.distributed as dist

    if not cfg.enabled or launched_world_size() == 1 or dist.is_initialized():
        return
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=cfg.timeout_s))


def peak_memory_per_rank() -> list[float]:
    """Each rank's peak memory in MiB, gathered on every rank: accelerator memory when a
    GPU is used, else the process's peak resident set size."""
    import resource

    import torch.distributed as dist

    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if not (dist.is_available() and dist.is_initialized()):
        return [round(peak, 1)]
    peaks: list[float | None] = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, round(peak, 1))
    return peaks  # type: ignore[return-value]
