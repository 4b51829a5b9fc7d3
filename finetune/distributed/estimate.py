"""Model-state memory per GPU and per node for each ZeRO stage, before any run.

Parameters are counted on a model built on the meta device (no memory, no download of
weights), and the memory figures come from DeepSpeed's own estimators
(`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`); stages
0 and 1, which DeepSpeed has no estimator for, use the same bytes-per-parameter accounting.
Model states are parameters, gradients and optimizer states; activations come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from finetune.config.schema import RunConfig

GIB = 2**30


@dataclass(frozen=True)
class StageEstimate:
    """Model-state memory of one ZeRO stage / offload choice, in bytes."""

    stage: int
    offload: str
    gpu_per_rank: int
    cpu_per_node: int
    gpus_per_node: int

    @property
    def gpu_per_node(self) -> int:
        return self.gpu_per_rank * self.gpus_per_node


def meta_model(cfg: RunConfig) -> nn.Module:
    """The run's model built on the meta device: shapes and counts, no memory."""
    from finetune.methods.base import TASK_AUTO_CLASSES, model_config

    # No tokenizer is built here: a tokenizer trained by the run sizes the vocabulary
    train = cfg.tokenizer.train
    config = model_config(cfg.model, {"vocab_size": train.vocab_size} if train else {})
    with torch.device("meta"):
        return TASK_AUTO_CLASSES[cfg.model.task].from_config(
            config, trust_remote_code=cfg.model.trust_remote_code
        )


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total parameters, parameters of the largest single module), as ZeRO-3 needs."""
    total = sum(p.numel() for p in model.parameters())
    largest = max(
        (sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        default=0,
    )
    return total, largest


def estimate_stages(
    total: int, largest: int, gpus_per_node: int, nodes: int
) -> list[StageEstimate]:
    """Model-state memory for ZeRO stages 0-3, without and with CPU offload."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    gpus = gpus_per_node * nodes
    # DeepSpeed's accounting: 2 bytes of 16-bit parameters + 18 bytes per parameter of
    # gradients (16- and 32-bit), 32-bit master weights and Adam's two moments.
    cpu_buffer = int(total * 4 * gpus_per_node * 1.5)
    rows = [
        StageEstimate(0, "none", 20 * total, cpu_buffer, gpus_per_node),
        StageEstimate(1, "none", 4 * total + 16 * total // gpus, cpu_buffer, gpus_per_node),
    ]
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, gpus_per_node, nodes, offload)
        rows.append(StageEstimate(2, "optimizer" if offload else "none", gpu, cpu, gpus_per_node))
    for offload, params in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, gpus_per_node, nodes, offload, params
        )
        name = "optimizer+params" if params else "optimizer" if offload else "none"
        rows.append(StageEstimate(3, name, gpu, cpu, gpus_per_node))
    return rows


def format_estimate(
    total: int, largest: int, rows: list[StageEstimate], gpu_memory_gb: float | None
) -> str:
    """A table of the estimates, and which stage fits `gpu_memory_gb` per GPU."""
    unit, size = ("GiB", GIB) if max(r.gpu_per_node for r in rows) >= GIB else ("MiB", 2**20)
    lines = [
        f"parameters: {total:,} (largest module {largest:,})",
        "model states (params, grads, optimizer) per DeepSpeed's estimators; "
        "activations come on top",
        f"{'stage':>5}  {'offload':<17}{unit + '/GPU':>9}{unit + ' GPU/node':>14}"
        f"{unit + ' CPU/node':>14}" + ("  fits" if gpu_memory_gb else ""),
    ]
    for row in rows:
        line = (
            f"{row.stage:>5}  {row.offload:<17}{row.gpu_per_rank / size:>9.2f}"
            f"{row.gpu_per_node / size:>14.2f}{row.cpu_per_node / size:>14.2f}"
        )
        if gpu_memory_gb:
            line += "  yes" if _fits(row, gpu_memory_gb) else "  no"
        lines.append(line)
    if gpu_memory_gb:
        fitting = [row for row in rows if _fits(row, gpu_memory_gb)]
        if fitting:
            best = fitting[0]  # rows run from the fastest (least sharding) to the leanest
            lines.append(
                f"lowest stage that fits {gpu_memory_gb:g} GB per GPU: ZeRO-{best.stage}"
                + (f" with {best.offload} offload" if best.offload != "none" else "")
            )
        else:
            lines.append(
                f"no ZeRO stage fits {gpu_memory_gb:g} GB per GPU: add GPUs or nodes, "
                "or train with LoRA/QLoRA"
            )
    return "\n".join(lines)


def _fits(row: StageEstimate, gpu_memory_gb: float) -> bool:
    # Leave a fifth of the GPU to activations, buffers and the CUDA context.
    return row.gpu_per_rank <= 0.8 * gpu_memory_gb * 1e9
