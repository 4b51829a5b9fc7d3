"""Fixtures for the Hub tests: a local Hub server, client environments, and trained runs.

Client code (training, `finetune push`, loading) always runs in subprocesses: huggingface_hub
reads HF_ENDPOINT and HF_HUB_DISABLE_XET when it is imported, and other test modules import
it into this process first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_config, write_config

from .fake_hub import FakeHub

WRITE_TOKEN = "hf_aliceWriteTokenForTheFakeHub0123456789"
READ_TOKEN = "hf_aliceReadOnlyTokenForTheFakeHub012345678"
BOB_TOKEN = "hf_bobWriteTokenForTheFakeHub0123456789abcd"
TOKENS = {
    WRITE_TOKEN: ("alice", "write"),
    READ_TOKEN: ("alice", "read"),
    BOB_TOKEN: ("bob", "write"),
}

FULL_REPO = "alice/tiny-llama"
LORA_REPO = "alice/tiny-llama-lora"
DECODER_REPO = "alice/tiny-decoder"
ENCODER_REPO = "alice/tiny-encoder-cls"

# What a full model's repo must hold, and nothing else.
FULL_FILES = {
    ".gitattributes",
    "README.md",
    "loss_curve.png",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def hub_env(hub: FakeHub, home: Path, token: str | None = WRITE_TOKEN) -> dict[str, str]:
    """Environment for a client subprocess talking to `hub`, with its own HF_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",  # the fake Hub speaks the LFS protocol, not Xet
        "HF_HOME": str(home),
        "HF_TOKEN": token or "",
        "HUGGING_FACE_HUB_TOKEN": "",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def run_without_finetune(script: str, env: dict[str, str], cwd: Path, *args: str):
    """Run a Python script where `import finetune` fails.

    finetune is installed editable, so a `finetune.py` that raises ImportError goes first on
    PYTHONPATH; the script runs from `cwd`, outside the repository.
    """
    blocker = cwd / "blocker"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "finetune.py").write_text("raise ImportError('finetune is blocked in this test')\n")
    guard = (
        "try:\n    import finetune\nexcept ImportError:\n    pass\nelse:\n"
        "    raise SystemExit(f'finetune is importable from {finetune.__file__}')\n"
    )
    path = cwd / "script.py"
    path.write_text(guard + script)
    full_env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    full_env.update(env, PYTHONPATH=str(blocker), TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, str(path), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree_hash(root: Path) -> str:
    """A digest of every file's relative path, content and mode under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mode).encode())
    return digest.hexdigest()


def assert_no_token(*texts: str) -> None:
    for token in TOKENS:
        for text in texts:
            assert token not in text, "a token leaked into the output"


@dataclass
class Run:
    out: Path
    repo_id: str
    output: str  # stdout + stderr of the commands that trained and pushed it


@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory: pytest.TempPathFactory):
    hub = FakeHub(tmp_path_factory.mktemp("fake_hub"), TOKENS).start()
    yield hub
    hub.stop()


def _train(root: Path, cfg: dict, env: dict[str, str]) -> str:
    result = run_cli("train", str(write_config(root / "run.yaml", cfg)), **env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def full_run(fake_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny Llama trained with hub.push_to_hub and strategy every_save (2 checkpoints)."""
    root = tmp_path_factory.mktemp("full")
    cfg = tiny_config(
        root,
        train={"max_steps": 8, "eval_steps": 4},
        data={"eval_ratio": 0.1},
        logging={"steps": 2},
        output={"save_steps": 4},
        hub={"push_to_hub": True, "repo_id": FULL_REPO, "strategy": "every_save"},
    )
    output = _train(root, cfg, hub_env(fake_hub, root / "hf_home"))
    return Run(Path(cfg["output"]["dir"]), FULL_REPO, output)


@pytest.fixture(scope="session")
def lora_run(fake_hub: FakeHub, full_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A LoRA adapter trained on the pushed Llama (loaded from the fake Hub), then pushed with
    `finetune push`."""
    root = tmp_path_factory.mktemp("lora")
    cfg = tiny_config(
        root,
        train={"max_steps": 6, "lr": 1e-2},
        logging={"steps": 2},
        method={"type": "lora", "rank": 4, "alpha": 8},
    )
    cfg["model"] = {"name_or_path": full_run.repo_id}
    cfg["tokenizer"] = {}
    env = hub_env(fake_hub, root / "hf_home")
    output = _train(root, cfg, env)
    out = Path(cfg["output"]["dir"])
    pushed = run_cli("push", str(out), "--repo-id", LORA_REPO, **env)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    return Run(out, LORA_REPO, output + pushed.stdout + pushed.stderr)


@pytest.fixture
def output_copy(full_run: Run, tmp_path: Path) -> Path:
    """A copy of the full run's output directory, for pushes that are meant to fail."""
    return Path(shutil.copytree(full_run.out, tmp_path / "out", symlinks=True))


@pytest.fixture(scope="session")
def decoder_run(fake_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The project's own decoder, trained and pushed at the end (remote code in the repo)."""
    root = tmp_path_factory.mktemp("decoder")
    cfg = tiny_config(root, train={"max_steps": 4}, logging={"steps": 2})
    cfg["model"]["architecture"] = "decoder"
    cfg["hub"] = {"push_to_hub": True, "repo_id": DECODER_REPO, "license": "mit"}
    output = _train(root, cfg, hub_env(fake_hub, root / "hf_home"))
    return Run(Path(cfg["output"]["dir"]), DECODER_REPO, output)


@pytest.fixture(scope="session")
def encoder_run(fake_hub: FakeHub, full_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The project's own encoder with a classification head, saved by save_pretrained (not a
    training run: the trainer fine-tunes causal LMs) and pushed with `finetune push`."""
    from finetune.models import FinetuneEncoderConfig, FinetuneEncoderForSequenceClassification

    root = tmp_path_factory.mktemp("encoder")
    out = root / "out"
    torch.manual_seed(0)
    config = FinetuneEncoderConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        vocab_size=300,
        pad_token_id=1,
        num_labels=3,
        id2label={0: "red", 1: "green", 2: "blue"},
        label2id={"red": 0, "green": 1, "blue": 2},
    )
    FinetuneEncoderForSequenceClassification(config).eval().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full_run.out / name, out / name)
    env = hub_env(fake_hub, root / "hf_home")
    pushed = run_cli("push", str(out), "--repo-id", ENCODER_REPO, **env)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    return Run(out, ENCODER_REPO, pushed.stdout + pushed.stderr)
