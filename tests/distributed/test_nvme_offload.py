"""ZeRO-3 with parameters and optimizer states offloaded to NVMe trains as one process does.

NVMe offload needs DeepSpeed's async_io op, which builds against libaio; where it cannot be
built (no libaio-dev) preflight refuses the run, which test_distributed_config checks, and
this test is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.distributed.checks import async_io_available
from tests.conftest import run_cli
from tests.distributed.helpers import (
    free_port,
    initial_checkpoint,
    launch,
    losses,
    needs_launcher,
    run_config,
    tail,
    zero3_file,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
    needs_launcher,
    pytest.mark.skipif(not async_io_available(), reason="DeepSpeed's async_io op needs libaio-dev"),
]

STEPS = 4


def test_nvme_offload_matches_one_process(tmp_path: Path) -> None:
    start = initial_checkpoint(tmp_path)
    single = run_config(tmp_path, "single", STEPS, **start)
    result = run_cli("train", str(single))
    assert result.returncode == 0, result.stderr[-3000:]
    zero3 = zero3_file(tmp_path)
    swap = tmp_path / "nvme"
    swap.mkdir()
    offload = {"optimizer": "nvme", "params": "nvme", "nvme_path": str(swap)}
    config = run_config(
        tmp_path,
        "nvme",
        STEPS,
        distributed={"deepspeed": str(zero3), "offload": offload},
        train={"micro_batch_size": 4},
        **start,
    )
    result = launch(config, free_port(), timeout=900)  # the first run builds async_io
    assert result.returncode == 0, tail(result)
    assert losses(config.parent / "out") == pytest.approx(losses(single.parent / "out"), abs=1e-4)
    # Each rank made its swap folders there (the swap files are deleted at exit).
    params = swap / "zero_stage_3" / "float32params"
    assert sorted(p.name for p in params.iterdir()) == ["rank0", "rank1"]
    assert (swap / "zero_stage_3" / "optimizer").is_dir()
