"""The multi-node launch scripts: two no-ssh node launchers on this machine run one job."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.distributed.helpers import losses, needs_launcher, run_config

SCRIPTS = REPO / "scripts"


@pytest.mark.parametrize(
    "script", ["launch_multinode.sh", "launch_node.sh", "slurm/finetune.sbatch"]
)
def test_scripts_parse(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)]).returncode == 0


def test_node_launcher_needs_its_rank(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NODE_RANK"}
    result = subprocess.run(
        [str(SCRIPTS / "launch_node.sh"), "hostfile", "config.yaml"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "NODE_RANK" in result.stdout


@pytest.mark.slow
@pytest.mark.distributed
@needs_launcher
def test_two_no_ssh_nodes_run_one_job(tmp_path: Path) -> None:
    config = run_config(tmp_path, "job", 4, distributed={"zero_stage": 2})
    hostfile = tmp_path / "hostfile"
    # The deepspeed launcher refuses one name twice: two names for this machine.
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = "29771"
    nodes = [
        subprocess.Popen(
            [str(SCRIPTS / "launch_node.sh"), str(hostfile), str(config)],
            cwd=REPO,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"node{rank}.log").open("w"),
        )
        for rank in (0, 1)
    ]
    codes = [node.wait(timeout=300) for node in nodes]
    assert codes == [0, 0], (tmp_path / "node0.log").read_text()[-3000:]
    out = config.parent / "out"
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["global_step"] == 4
    assert len(losses(out)) == 4
