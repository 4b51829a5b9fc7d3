"""The multi-node launch scripts run one job on two "nodes" of this machine.

The hostfile names this machine twice (`localhost` and `127.0.0.1`: the launcher refuses one
name twice). pdsh, ssh, srun and scontrol are not installed here, so stand-ins on PATH
record the commands the launchers generate and run them as the real tools would (pdsh:
the command once per host with `%n` set to the host's index; srun: once per node with
SLURM_NODEID), and the job the generated commands start must train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.distributed.helpers import free_port, losses, needs_launcher, run_config

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
    cache = tmp_path / "cache"  # one disk shared by both "nodes"
    config = run_config(
        tmp_path,
        "job",
        4,
        distributed={"zero_stage": 2},
        data={"cache_dir": str(cache)},
        output={"dir": str(tmp_path / "job" / "out"), "save_steps": 2},
    )
    hostfile = tmp_path / "hostfile"
    # The deepspeed launcher refuses one name twice: two names for this machine.
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(free_port())
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
    # Global rank 0 tokenized and wrote the cache; the rank on the other node waited and
    # read it (with each node's local rank 0 first, both would have tokenized).
    assert info["sources_tokenized_per_rank"] == [1, 0]
    assert len([entry for entry in cache.iterdir() if not entry.name.startswith(".")]) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]


# pdsh -S -f FANOUT -w HOST1,HOST2 COMMAND...: COMMAND runs on each host, %n its index.
FAKE_PDSH = """
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "pdsh", "argv": args}) + "\\n")
hosts = args[args.index("-w") + 1].split(",")
command = " ".join(args[args.index("-w") + 2:])
nodes = [subprocess.Popen(["bash", "-c", command.replace("%n", str(i))]) for i in range(len(hosts))]
sys.exit(max(node.wait() for node in nodes))
"""
# DeepSpeed's ssh check before a pdsh launch: `ssh HOST hostname`.
FAKE_SSH = """
import sys
sys.exit(0)
"""
# srun ... bash -c SCRIPT _ ARGS: once per node of SLURM_JOB_NODELIST, with SLURM_NODEID.
FAKE_SRUN = """
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "srun", "argv": args}) + "\\n")
command = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
nodes = os.environ["SLURM_JOB_NODELIST"].split(",")
procs = [
    subprocess.Popen(command, env={**os.environ, "SLURM_NODEID": str(i)})
    for i in range(len(nodes))
]
sys.exit(max(p.wait() for p in procs))
"""
# scontrol show hostnames LIST: one name a line.
FAKE_SCONTROL = """
import sys
print("\\n".join(sys.argv[3].split(",")))
"""


def fake_tools(tmp_path: Path, **tools: str) -> dict[str, str]:
    """Put the stand-ins on PATH; return the environment that uses them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, source in tools.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "calls.jsonl"),
        "TOKENIZERS_PARALLELISM": "false",
        "MASTER_PORT": str(free_port()),
    }


def calls(tmp_path: Path, tool: str) -> list[list[str]]:
    rows = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    return [row["argv"] for row in rows if row["tool"] == tool]


def assert_trained_on_two_nodes(out: Path) -> None:
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["global_step"] == 4
    assert len(losses(out)) == 4


@pytest.mark.slow
@pytest.mark.distributed
@needs_launcher
def test_hostfile_with_pdsh_runs_one_job(tmp_path: Path) -> None:
    config = run_config(tmp_path, "job", 4, distributed={"zero_stage": 2})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    env = fake_tools(tmp_path, pdsh=FAKE_PDSH, ssh=FAKE_SSH)
    result = subprocess.run(
        [str(SCRIPTS / "launch_multinode.sh"), str(hostfile), str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [argv] = calls(tmp_path, "pdsh")
    assert argv[argv.index("-w") + 1] == "localhost,127.0.0.1"
    command = " ".join(argv)
    assert "--node_rank=%n" in command and "--master_addr=localhost" in command
    assert "deepspeed.launcher.launch" in command and " --module " in command
    assert command.endswith(f"finetune.cli train {config}")
    assert_trained_on_two_nodes(config.parent / "out")


@pytest.mark.slow
@pytest.mark.distributed
@needs_launcher
def test_slurm_batch_script_runs_one_job(tmp_path: Path) -> None:
    config = run_config(tmp_path, "job", 4, distributed={"zero_stage": 2})
    env = fake_tools(tmp_path, srun=FAKE_SRUN, scontrol=FAKE_SCONTROL)
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="localhost,127.0.0.1",
        SLURM_SUBMIT_DIR=str(REPO),
        GPUS_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
    )
    try:
        result = subprocess.run(
            ["bash", str(SCRIPTS / "slurm" / "finetune.sbatch"), str(config)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        hostfile = (REPO / "hostfile-4242").read_text()
    finally:
        (REPO / "hostfile-4242").unlink(missing_ok=True)
    assert hostfile == "localhost slots=1\n127.0.0.1 slots=1\n"
    [argv] = calls(tmp_path, "srun")
    assert "--kill-on-bad-exit=1" in argv
    assert_trained_on_two_nodes(config.parent / "out")


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_runs_one_job(tmp_path: Path) -> None:
    config = run_config(tmp_path, "job", 4, distributed={"zero_stage": 3})
    result = subprocess.run(
        [
            *("torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())),
            *("-m", "finetune.cli", "train", str(config)),
        ],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((config.parent / "out" / "run_info.json").read_text())
    assert info["engine"] == "DeepSpeedEngine"
    assert_trained_on_two_nodes(config.parent / "out")
