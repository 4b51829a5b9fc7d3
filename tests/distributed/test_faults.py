"""A rank that dies or hangs ends the whole job, non-zero, within distributed.timeout_s.

SIGKILL: gloo fails the other rank's next collective at once. SIGSTOP: the other rank waits
in a collective until the watchdog (timeout_s without progress) exits it; the deepspeed
launcher then stops the stalled rank (SIGTERM, and SIGKILL after its 30 s grace).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from finetune.distributed.watchdog import EXIT_CODE
from tests.conftest import REPO
from tests.distributed.helpers import needs_launcher, run_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed, needs_launcher]

TIMEOUT_S = 15
LAUNCHER_GRACE_S = 30  # deepspeed's launcher: SIGTERM, then SIGKILL 30 s later
BOUND_S = 60  # TIMEOUT_S + watchdog poll (2 s) + LAUNCHER_GRACE_S + slack


def start_job(tmp_path: Path, port: int) -> tuple[subprocess.Popen, psutil.Process]:
    config = run_config(
        tmp_path, "job", 5000, distributed={"zero_stage": 2, "timeout_s": TIMEOUT_S}
    )
    job = subprocess.Popen(
        [
            *("deepspeed", "--num_gpus", "2", "--master_port", str(port)),
            *("--module", "finetune.cli", "train", str(config)),
        ],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr.log").open("w"),  # a pipe would fill and block the ranks
    )
    metrics = config.parent / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not metrics.exists():  # training has started on every rank
        assert job.poll() is None and time.monotonic() < deadline, log(tmp_path)
        time.sleep(0.5)
    ranks = [
        p
        for p in psutil.Process(job.pid).children(recursive=True)
        if "--local_rank=1" in " ".join(p.cmdline())
    ]
    assert len(ranks) == 1
    return job, ranks[0]


def log(tmp_path: Path) -> str:
    return (tmp_path / "stderr.log").read_text()[-3000:]


def wait_for_end(job: subprocess.Popen, victim: psutil.Process) -> tuple[int, float]:
    began = time.monotonic()
    try:
        job.wait(timeout=BOUND_S + 60)
    except subprocess.TimeoutExpired:
        for proc in [*psutil.Process(job.pid).children(recursive=True), victim]:
            proc.kill()
        job.kill()
        pytest.fail("the job did not end")
    return job.returncode, time.monotonic() - began


def test_killed_rank_ends_the_job(tmp_path: Path) -> None:
    job, victim = start_job(tmp_path, 29761)
    os.kill(victim.pid, signal.SIGKILL)
    code, seconds = wait_for_end(job, victim)
    assert code != 0
    assert seconds < BOUND_S


def test_stopped_rank_ends_the_job(tmp_path: Path) -> None:
    job, victim = start_job(tmp_path, 29762)
    os.kill(victim.pid, signal.SIGSTOP)
    code, seconds = wait_for_end(job, victim)
    assert code == EXIT_CODE, log(tmp_path)
    assert "made no training progress" in log(tmp_path)
    assert TIMEOUT_S <= seconds < BOUND_S
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
