"""A model saved under one transformers release generates the same tokens under another.

A saved model's code runs under whatever transformers its user has. CI builds two environments,
the newest and the oldest versions that pyproject.toml allows, and points `FINETUNE_OTHER_PYTHON`
at the other one's interpreter: each environment then saves models for the other and loads the
other's models through remote code, with finetune blocked, and compares greedy and beam tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

from . import learned

REPO = Path(__file__).resolve().parents[2]
OTHER_PYTHON = os.environ.get("FINETUNE_OTHER_PYTHON")

# Set when the other environment is being built alongside this run (.ci/run): this file
# appears once it is ready, or READY.failed if the build failed.
OTHER_READY = os.environ.get("FINETUNE_OTHER_READY")

pytestmark = pytest.mark.skipif(
    not OTHER_PYTHON,
    reason="FINETUNE_OTHER_PYTHON (another environment's python, see scripts/test_envs.sh) unset",
)


@pytest.fixture(scope="module", autouse=True)
def other_environment_ready() -> None:
    if not OTHER_READY:
        return
    deadline = time.monotonic() + 1200
    while not Path(OTHER_READY).exists():
        if Path(f"{OTHER_READY}.failed").exists():
            pytest.fail(f"building the other environment ({OTHER_PYTHON}) failed; see its log")
        if time.monotonic() > deadline:
            pytest.fail(f"the other environment ({OTHER_PYTHON}) was not built in 20 minutes")
        time.sleep(2)


def run(python: str, args: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", **extra)
    return env


def load_remotely(python: str, folders: list[str], tmp_path: Path) -> str:
    """Generate from `folders` through remote code under `python`, finetune blocked."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "finetune.py").write_text("raise ImportError('finetune is blocked in this test')\n")
    script = str(Path(__file__).with_name("remote_generate.py"))
    env = clean_env(tmp_path, PYTHONPATH=str(blocker), TRANSFORMERS_VERBOSITY="error")
    return run(python, [script, *folders], env, cwd=tmp_path).split()[-1]


def assert_same_tokens(folders: list[str], saved_with: str, loaded_with: str) -> None:
    assert saved_with != loaded_with, f"both environments run transformers {saved_with}"
    for folder in folders:
        config = json.loads((Path(folder) / "config.json").read_text())
        assert config["transformers_version"] == saved_with
        expected = torch.load(Path(folder) / "expected_tokens.pt")
        remote = torch.load(Path(folder) / "remote_tokens.pt")
        for mode, tokens in expected.items():
            torch.testing.assert_close(remote[mode], tokens, rtol=0, atol=0, msg=folder + mode)


def test_saved_here_generates_under_the_other_release(tmp_path: Path) -> None:
    folders = learned.save_generation_cases(tmp_path / "saved")
    other_version = load_remotely(OTHER_PYTHON, folders, tmp_path)
    assert_same_tokens(folders, transformers.__version__, other_version)


def test_saved_under_the_other_release_generates_here(tmp_path: Path) -> None:
    code = (
        "import json, sys, transformers\n"
        "from tests.models.learned import save_generation_cases\n"
        "print(json.dumps([transformers.__version__, save_generation_cases(sys.argv[1])]))\n"
    )
    output = run(OTHER_PYTHON, ["-c", code, str(tmp_path / "saved")], clean_env(tmp_path), REPO)
    other_version, folders = json.loads(output.strip().splitlines()[-1])
    here_version = load_remotely(sys.executable, folders, tmp_path)
    assert here_version == transformers.__version__
    assert_same_tokens(folders, other_version, here_version)
