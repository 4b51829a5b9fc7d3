"""Preflight checks of a distributed run: the layout fits the ranks, the features combine.

Called by `finetune.preflight` before anything is built. Each refusal names the field and
what to change, and says why the combination is refused.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from finetune.config.schema import RunConfig
from finetune.distributed.launch import launched_world_size
from finetune.errors import PreflightError

BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw", "paged_adamw_8bit", "lamb")


def check_distributed(cfg: RunConfig, world_size: int | None = None) -> None:
    """Refuse a distributed layout or feature combination that cannot run.

    Args:
        cfg: the run.
        world_size: ranks launched (read from WORLD_SIZE when None).
    """
    dist = cfg.distributed
    if not dist.enabled:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise PreflightError(
            "the distributed section needs the 'deepspeed' package: "
            "pip install 'finetune[deepspeed]'"
        )
    if dist.deepspeed is not None and not Path(dist.deepspeed).is_file():
        raise PreflightError(f"distributed.deepspeed: file not found: {dist.deepspeed}")
    world_size = launched_world_size() if world_size is None else world_size
    _check_layout(dist.tensor_parallel, dist.pipeline_stages, world_size)
    from finetune.distributed.deepspeed import deepspeed_config, zero_stage

    ds = deepspeed_config(dist, cfg.train) or {}
    stage = zero_stage(ds)
    if dist.pipeline_stages > 1:
        _check_pipeline(cfg, stage)
    if dist.tensor_parallel > 1:
        _check_tensor_parallel(cfg, stage)
    _check_offload(cfg, ds)


def _check_layout(tensor: int, pipeline: int, world_size: int) -> None:
    model_parallel = tensor * pipeline
    if world_size % model_parallel:
        raise PreflightError(
            f"distributed: world size {world_size} is not data x tensor x pipeline: "
            f"tensor_parallel={tensor} x pipeline_stages={pipeline} = {model_parallel} "
            f"must divide it. Launch a multiple of {model_parallel} ranks "
            f"(deepspeed --num_gpus {model_parallel} ...) or lower tensor_parallel/pipeline_stages"
        )


def _check_pipeline(cfg: RunConfig, stage: int) -> None:
    if stage >= 2:
        raise PreflightError(
            f"distributed.pipeline_stages: DeepSpeed's pipeline engine refuses ZeRO stage "
            f"{stage} (gradients and parameters are split by stage already); "
            "use zero_stage 0 or 1 with a pipeline"
        )
    refusals = {
        cfg.data.packing: "data.packing: the pipeline sends fixed-shape padded batches "
        "between stages; set data.packing=false",
        cfg.method.type != "full": f"method.type: {cfg.method.type} is not supported with "
        "distributed.pipeline_stages (stages are cut from the plain model's layers); "
        "use method.type=full or zero_stage/tensor_parallel",
        cfg.train.gradient_checkpointing: "train.gradient_checkpointing: not supported "
        "with distributed.pipeline_stages; set it to false",
        cfg.train.optimizer != "adamw": f"train.optimizer: {cfg.train.optimizer} is not "
        "supported with distributed.pipeline_stages; use adamw",
        getattr(cfg.model, "task", "causal_lm") != "causal_lm": "model.task: "
        "distributed.pipeline_stages trains causal language models only",
        bool(cfg.train.exact_match_rows): "train.exact_match_rows: generation needs the "
        "whole model, and each pipeline rank holds one stage; set it to 0 and score the "
        "saved model afterwards with `finetune eval`",
    }
    for refused, message in refusals.items():
        if refused:
            raise PreflightError(message)


def _check_tensor_parallel(cfg: RunConfig, stage: int) -> None:
    if stage == 3:
        raise PreflightError(
            "distributed.tensor_parallel: DeepSpeed AutoTP training supports ZeRO stages "
            "0-2, not 3; use zero_stage 0, 1 or 2 with tensor_parallel"
        )
    if cfg.method.type != "full":
        raise PreflightError(
            f"distributed.tensor_parallel: AutoTP shards plain linear layers; "
            f"method.type={cfg.method.type} wraps them (peft/bitsandbytes) and is not "
            "sharded. Use method.type=full, or zero_stage without tensor_parallel"
        )


def _check_offload(cfg: RunConfig, ds: dict) -> None:
    offload = cfg.distributed.offload
    device = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if device != "none" and cfg.train.optimizer in BNB_OPTIMIZERS:
        raise PreflightError(
            f"train.optimizer: {cfg.train.optimizer} (bitsandbytes) cannot be offloaded; "
            f"with optimizer offload to {device} use train.optimizer=adamw "
            "(DeepSpeed runs its CPU Adam on the offloaded states)"
        )
    zero = ds.get("zero_optimization", {})
    devices = {zero.get(key, {}).get("device") for key in ("offload_optimizer", "offload_param")}
    if "nvme" not in devices:
        return
    if "nvme" in (offload.optimizer, offload.params) and not Path(offload.nvme_path).is_dir():
        raise PreflightError(
            f"distributed.offload.nvme_path: {offload.nvme_path} is not a directory"
        )
    if not async_io_available():
        raise PreflightError(
            "distributed.offload: NVMe offload needs DeepSpeed's async_io op, which needs "
            "libaio (apt install libaio-dev, or dnf install libaio-devel) and a C++ "
            "compiler; `ds_report` shows it as async_io [OKAY] once they are there. "
            "Or offload to cpu"
        )


def async_io_available() -> bool:
    """Whether DeepSpeed can build its async_io op (NVMe offload) on this machine."""
    from deepspeed.ops.op_builder import AsyncIOBuilder

    return AsyncIOBuilder().is_compatible(verbose=False)
