"""The `deepspeed` launcher runs the CLI as a real 2-rank job on CPU (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config, write_config
from tests.distributed.helpers import free_port, launch, needs_launcher, tail

pytestmark = [pytest.mark.slow, pytest.mark.distributed, needs_launcher]


def test_deepspeed_launcher_runs_two_ranks(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, distributed={"zero_stage": 2})
    cfg["train"]["max_steps"] = 10
    path = write_config(tmp_path / "run.yaml", cfg)
    port = free_port()
    result = launch(path, port, timeout=600)
    assert result.returncode == 0, tail(result)
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["engine"] == "DeepSpeedEngine"
    assert info["global_step"] == 10
    # DeepSpeed's CPU shared-memory allreduce buffers (69 MB a rank) are not left behind.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
