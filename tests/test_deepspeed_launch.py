"""The `deepspeed` launcher runs the CLI as a real 2-rank job on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
def test_deepspeed_launcher_runs_two_ranks(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, distributed={"zero_stage": 2})
    cfg["train"]["max_steps"] = 10
    path = write_config(tmp_path / "run.yaml", cfg)
    result = subprocess.run(
        [
            "deepspeed",
            "--num_gpus",
            "2",
            "--master_port",
            "29731",
            "--module",
            "finetune.cli",
            "train",
            str(path),
        ],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["engine"] == "DeepSpeedEngine"
    assert info["global_step"] == 10
    # DeepSpeed's CPU shared-memory allreduce buffers (69 MB a rank) are not left behind.
    assert not list(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*_29731_*"))
