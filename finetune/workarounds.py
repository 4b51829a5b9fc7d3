"""Workarounds for the libraries finetune builds on, in one place.

Each names the release range it was written for, the cause, and the test in
`tests/test_workarounds.py` that checks the cause is still there: when that test fails,
upstream has changed (usually fixed) it, and the workaround can go. The cache-name shim for
transformers 5.24 lives apart, in `finetune/models/compat.py`, because it is copied next to
saved models and must import nothing from finetune.

The libraries are imported inside the functions: `import finetune` stays light.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from torch import nn


def keep_4bit_training_layout(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    For: bitsandbytes 0.50 (0.50.2 checked), on CPUs with AVX512-BF16. Cause:
    `Linear4bit.forward` repacks the weight in place on the first no-grad eval-mode forward
    (an evaluation before or during training) and then uses a kernel with no backward, so no
    gradient reaches the layers below it and QLoRA silently stops learning. The unpacked
    layout trains and evaluates correctly. Test: `test_bitsandbytes_cpu_repack`.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def unlink_shm_allreduce_buffer() -> None:
    """Remove the name of this rank's DeepSpeed shared-memory allreduce buffer.

    For: DeepSpeed 0.17-0.19 (0.19.8 checked), CPU runs with every rank on one machine.
    Cause: its comm op (`ops/csrc/cpu/comm/shm.cpp`) creates a 69 MB buffer per rank in
    /dev/shm, named after MASTER_ADDR and MASTER_PORT, and never calls its own
    `shared_close`: each run left 69 MB per rank behind (19 GB after a day of test runs here,
    until the OOM killer stepped in), and a later run on the same port mapped a crashed
    run's stale buffer. Call it right after `deepspeed.init_distributed`: once every rank
    has mapped every buffer (the barrier) the names can go, and the mappings live until the
    ranks exit. Test: `test_deepspeed_never_unlinks_its_cpu_buffers`.
    """
    import torch.distributed as dist

    dist.barrier()
    name = "_".join(
        [
            "deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            str(dist.get_rank()),
        ]
    )
    (Path("/dev/shm") / name).unlink(missing_ok=True)


def mark_stage_parameters(module) -> None:
    """Make gradient clipping in a DeepSpeed pipeline see the whole model's norm.

    For: DeepSpeed 0.17-0.19 (0.19.8 checked), `PipelineModule` without ZeRO. Cause:
    `runtime.utils.clip_grad_norm_` sums the squared gradient norm over the model-parallel
    group (the pipeline stages) but, on every stage but the first, counts only parameters
    flagged `model_parallel` (Megatron's flag); unflagged, clipping uses the first stage's
    norm alone and the run drifts from the single-process one. Every stage owns distinct
    parameters, so all are flagged; the tied embedding's copy on a later stage is not, as its
    all-reduced gradient is already counted by the first stage.
    Test: `test_deepspeed_clipping_counts_flagged_parameters_only`.
    """
    tied = {id(p) for m in module.tied_modules.values() for p in m.parameters()}
    first = module.stage_id == 0
    for param in module.parameters():
        if first or id(param) not in tied:
            param.model_parallel = True


def close_progress_bars() -> None:
    """Close every open tqdm progress bar.

    For: tqdm 4 (4.67 checked), which keeps no public list of open bars: this reads
    `tqdm.std.tqdm._instances`, where every bar (tqdm.auto's included) registers. Cause: the
    Trainer's progress bar is closed only when training ends, so an error printed after a
    failure would follow the bar on its line. Test: `test_tqdm_lists_open_bars`.
    """
    std = sys.modules.get("tqdm.std")
    if std is not None:
        for bar in list(std.tqdm._instances):
            bar.close()


def set_tensorboard_dir(path: Path) -> None:
    """Point transformers' TensorBoard callback at `path` (a process-wide setting).

    For: transformers 5 (5.23-5.24 checked), whose `TrainingArguments` has no `logging_dir`:
    `TensorBoardCallback` reads the directory only from the `TENSORBOARD_LOGGING_DIR`
    environment variable, and unset, an evaluation before the first step writes to ./runs
    in the working directory. Test: `test_transformers_reads_tensorboard_dir_from_env`.
    """
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)


def exit_launched_rank(code: int) -> NoReturn:
    """End a rank started by a launcher (deepspeed, torchrun) with `code`, skipping the
    interpreter's teardown.

    For: torch 2.13 (gloo) with DeepSpeed 0.17-0.19. Cause: at interpreter exit the C++
    objects of the process groups DeepSpeed still references are destroyed in no set order,
    after the process group was shut down; now and then one destroys a thread that is still
    joinable and the rank aborts ("terminate called without an active exception", exit -6)
    after a successful run, so the launcher reports the job failed (seen once in about 30
    two-rank runs of the test suite, after `destroy_process_group` on every rank). Every
    file the run writes is closed by then; standard output and error are flushed here. The
    abort comes and goes, so no test can show it fixed: retry without this once torch and
    DeepSpeed tear their groups down in order.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def without_tied_keys(model: nn.Module, missing_keys: list[str]) -> list[str]:
    """`missing_keys` less the parameters tied to one that was loaded.

    For: transformers 5 (5.23-5.24 checked). Cause: `Trainer._issue_warnings_after_load`
    reports every key a resumed checkpoint lacks, and a checkpoint of a model with tied
    input/output embeddings stores the matrix once, so every resume of such a model (Llama
    with tied embeddings, the project's decoder) warned "There were missing keys in the
    checkpoint model loaded: ['lm_head.weight']" though the weight was loaded through its
    tie. Test: `test_transformers_warns_of_tied_keys_on_resume`.
    """
    names_of: dict[int, list[str]] = {}
    by_name = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
        by_name[name] = param
    missing = set(missing_keys)
    return [
        key
        for key in missing_keys
        if key not in by_name or all(name in missing for name in names_of[id(by_name[key])])
    ]
