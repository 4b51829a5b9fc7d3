"""The process group: started once per rank, with the run's timeout."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TypeVar

import torch

from finetune.config.schema import DistributedConfig
from finetune.workarounds import unlink_shm_allreduce_buffer

T = TypeVar("T")


def launched_world_size() -> int:
    """The number of ranks a launcher (deepspeed, torchrun, srun wrapper) started; 1 alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def collective_timeout_s(timeout_s: int) -> int:
    """The process group's timeout for a run with `distributed.timeout_s`.

    Once training has begun, the watchdog (finetune.distributed.watchdog) ends a rank that
    makes no progress for `timeout_s`, with a message and exit code 3. A collective stuck on
    a hung rank must not fail first with gloo's or NCCL's own traceback: when both were
    `timeout_s` the two raced, and either could win. The collective timeout is therefore a
    backstop, later than the watchdog's latest check, for the waits before training starts
    (data, model building), where no watchdog runs."""
    return timeout_s + 2 * min(5, timeout_s // 10) + 10


def init_process_group(cfg: DistributedConfig) -> None:
    """Start the process group for a launched DeepSpeed run, with the run's timeout.

    It must exist before a ZeRO-3 model is built (parameters are partitioned as they are
    created) and before accelerate starts one with its own default timeout. Every
    collective waiting on a rank that died or hangs fails after `collective_timeout_s`, the
    rank exits non-zero and the launcher stops the others.
    """
    import torch.distributed as dist

    if not cfg.enabled or launched_world_size() == 1 or dist.is_initialized():
        return
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        share_cpu_threads()
    deepspeed.init_distributed(
        dist_backend=backend, timeout=timedelta(seconds=collective_timeout_s(cfg.timeout_s))
    )
    if backend == "gloo":
        unlink_shm_allreduce_buffer()  # DeepSpeed leaves 69 MB a rank in /dev/shm


def shutdown_process_group() -> None:
    """End a finished run's process group on every rank together.

    Without it each rank tears its connections down at interpreter exit, in no set order,
    and with gloo a rank often aborts at exit after a successful run. It is not enough on
    its own: the CLI ends launched ranks with `workarounds.exit_launched_rank`.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def share_cpu_threads() -> None:
    """Give each rank on this machine its share of the cores, unless OMP_NUM_THREADS says.

    torch starts one thread per core in every process; with several ranks per machine the
    threads outnumber the cores and spin against each other. Measured on 2 cores, 2 ranks:
    a pipeline step took 11 s with the default, 0.6 s with one thread per rank.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // local))


def peak_memory_per_rank() -> list[float]:
    """Each rank's peak memory in MiB, gathered on every rank: accelerator memory when a
    GPU is used, else the process's peak resident set size."""
    import resource

    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return gather_per_rank(round(peak, 1))


def gather_per_rank(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (a one-item list without a
    process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[T | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values  # type: ignore[return-value]
