"""A rank that dies or hangs ends the whole job, non-zero, within distributed.timeout_s,
and the job then resumes from its last complete checkpoint.

SIGKILL: gloo fails the other rank's next collective at once. SIGSTOP: the other rank waits
in a collective until the watchdog (timeout_s without progress) exits it; the deepspeed
launcher then stops the stalled rank (SIGTERM, and SIGKILL after its 30 s grace). The fault
strikes after the step-10 checkpoint is complete; `--resume` continues from the newest
complete checkpoint to a few steps past it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from finetune.distributed.watchdog import EXIT_CODE
from finetune.train.checkpoints import latest_checkpoint
from tests.conftest import REPO
from tests.distributed.helpers import (
    free_port,
    launch,
    losses,
    needs_launcher,
    run_config,
    tail,
    zero3_file,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.distributed, needs_launcher]

TIMEOUT_S = 15
LAUNCHER_GRACE_S = 30  # deepspeed's launcher: SIGTERM, then SIGKILL 30 s later
BOUND_S = 60  # TIMEOUT_S + watchdog poll (2 s) + LAUNCHER_GRACE_S + slack


def job_config(tmp_path: Path, name: str, steps: int, distributed: dict) -> Path:
    """A tiny run with a constant learning rate (so a shorter run follows the same path),
    saving every 10 steps."""
    return run_config(
        tmp_path,
        name,
        steps,
        distributed={**distributed, "timeout_s": TIMEOUT_S},
        train={"micro_batch_size": 4, "lr_scheduler": "constant"},
        output={"dir": str(tmp_path / name / "out"), "save_steps": 10},
    )


def start_job(
    tmp_path: Path, port: int, distributed: dict
) -> tuple[subprocess.Popen, psutil.Process]:
    config = job_config(tmp_path, "job", 5000, distributed)
    job = subprocess.Popen(
        [
            *("deepspeed", "--num_gpus", "2", "--master_port", str(port)),
            *("--module", "finetune.cli", "train", str(config)),
        ],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=(tmp_path / "job.log").open("w"),  # a pipe would fill and block the ranks
        stderr=subprocess.STDOUT,
    )
    checkpoints = config.parent / "out" / "checkpoints"
    deadline = time.monotonic() + 240
    while latest_checkpoint(checkpoints) is None:  # training is under way on every rank
        assert job.poll() is None and time.monotonic() < deadline, log(tmp_path)
        time.sleep(0.2)
    ranks = [
        p
        for p in psutil.Process(job.pid).children(recursive=True)
        if "--local_rank=1" in " ".join(p.cmdline())
    ]
    assert len(ranks) == 1
    return job, ranks[0]


def log(tmp_path: Path) -> str:
    return (tmp_path / "job.log").read_text()[-3000:]


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


def resume_after_fault(tmp_path: Path) -> int:
    """`--resume` continues from the newest complete checkpoint, 4 steps past it; returns
    the step it resumed from."""
    config, out = tmp_path / "job" / "run.yaml", tmp_path / "job" / "out"
    step = int(latest_checkpoint(out / "checkpoints").name.removeprefix("checkpoint-"))
    result = launch(config, free_port(), 2, "--resume", "--set", f"train.max_steps={step + 4}")
    assert result.returncode == 0, tail(result)
    info = json.loads((out / "run_info.json").read_text())
    assert info["global_step"] == step + 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    # Each step once: the steps the fault cut off were logged again, replacing their lines
    assert steps == list(range(1, step + 5))
    assert len(losses(out)) == step + 4
    return step


def test_killed_rank_ends_the_job(tmp_path: Path) -> None:
    """Under ZeRO-3 (every tensor partitioned): save, kill, resume, and the resumed steps
    log the losses of an uninterrupted run."""
    zero3 = zero3_file(tmp_path)
    job, victim = start_job(tmp_path, free_port(), {"deepspeed": str(zero3)})
    os.kill(victim.pid, signal.SIGKILL)
    code, seconds = wait_for_end(job, victim)
    assert code != 0
    assert seconds < BOUND_S
    assert "exits with return code = -9" in log(tmp_path)  # the launcher names the dead rank
    step = resume_after_fault(tmp_path)

    uninterrupted = job_config(tmp_path, "uninterrupted", step + 4, {"deepspeed": str(zero3)})
    result = launch(uninterrupted, free_port())
    assert result.returncode == 0, tail(result)
    expected = losses(uninterrupted.parent / "out")[step:]
    assert losses(tmp_path / "job" / "out")[-4:] == pytest.approx(expected, abs=1e-5)


def test_stopped_rank_ends_the_job(tmp_path: Path) -> None:
    job, victim = start_job(tmp_path, free_port(), {"zero_stage": 2})
    os.kill(victim.pid, signal.SIGSTOP)
    code, seconds = wait_for_end(job, victim)
    assert code == EXIT_CODE, log(tmp_path)
    assert "made no training progress" in log(tmp_path)
    assert TIMEOUT_S <= seconds < BOUND_S
    assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
    resume_after_fault(tmp_path)


def test_sigterm_to_the_launcher_saves_a_checkpoint_on_every_rank(tmp_path: Path) -> None:
    """What a scheduler does before preemption: SIGTERM to every process of the job (the
    launcher passes another to each rank, one rank after the other). Both ranks stop after
    the same step, save its checkpoint together, and the resumed run logs the uninterrupted
    run's losses."""
    job, _ = start_job(tmp_path, free_port(), {"zero_stage": 2})
    time.sleep(1)  # a few steps past the first checkpoint
    launcher = psutil.Process(job.pid)
    processes = [launcher, *launcher.children(recursive=True)]
    began = time.monotonic()
    for process in processes:
        process.send_signal(signal.SIGTERM)
    # The deepspeed runner itself dies of the signal; its launcher and the ranks finish
    _, alive = psutil.wait_procs(processes, timeout=BOUND_S)
    for process in alive:
        process.kill()
    job.wait()
    assert not alive and time.monotonic() - began < LAUNCHER_GRACE_S, log(tmp_path)
    stops = [line for line in log(tmp_path).splitlines() if "error: stopped by SIGTERM" in line]
    assert len(stops) == 2, log(tmp_path)  # each rank, the same step
    step = int(stops[0].split("after step ")[1].split(";")[0])
    assert stops[1].split("after step ")[1].split(";")[0] == str(step)
    newest = latest_checkpoint(tmp_path / "job" / "out" / "checkpoints")
    assert newest is not None and newest.name == f"checkpoint-{step}"

    assert resume_after_fault(tmp_path) == step
    uninterrupted = job_config(tmp_path, "uninterrupted", step + 4, {"zero_stage": 2})
    result = launch(uninterrupted, free_port())
    assert result.returncode == 0, tail(result)
    expected = losses(uninterrupted.parent / "out")[step:]
    assert losses(tmp_path / "job" / "out")[-4:] == pytest.approx(expected, abs=1e-5)
