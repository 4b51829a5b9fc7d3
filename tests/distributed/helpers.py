"""Launching real multi-rank runs of the CLI on CPU for the distributed tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune.config.schema import RunConfig
from finetune.data.tokenizer import build_tokenizer
from finetune.methods import load_base_model
from tests.conftest import REPO, tiny_config, write_config

needs_launcher = pytest.mark.skipif(
    shutil.which("deepspeed") is None, reason="deepspeed launcher not installed"
)


def free_port() -> int:
    """A TCP port nothing listens on now, for a launcher's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def zero3_file(directory: Path) -> Path:
    """A ZeRO-3 DeepSpeed file that partitions every tensor: the default persistence
    threshold (1e5 elements) would keep each tensor of the tiny test models whole on every
    rank and prove nothing."""
    path = directory / "zero3.json"
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0}
    path.write_text(json.dumps({"zero_optimization": zero}))
    return path


def run_config(tmp_path: Path, name: str, steps: int = 4, **sections: Any) -> Path:
    """A tiny run (2-layer Llama, hidden 64) writing to tmp_path/name, logging every step."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(root)
    cfg["train"].update(max_steps=steps, micro_batch_size=8)
    cfg["logging"]["steps"] = 1
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return write_config(root / "run.yaml", cfg)


def launch(
    config: Path, port: int, ranks: int = 2, *args: str, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus RANKS --module finetune.cli train CONFIG ARGS`."""
    return subprocess.run(
        [
            *("deepspeed", "--num_gpus", str(ranks), "--master_port", str(port)),
            *("--module", "finetune.cli", "train", str(config), *args),
        ],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(out: Path) -> list[float]:
    """The per-step training losses a run logged to metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def tail(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def initial_checkpoint(tmp: Path) -> dict:
    """Save the tiny model with random weights and its tokenizer; return config sections
    that start from it."""
    cfg = RunConfig.model_validate(tiny_config(tmp))
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data, cfg.model.name_or_path)
    torch.manual_seed(0)
    model = load_base_model(cfg.model, tokenizer)
    path = tmp / "initial"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return {
        "model": {"name_or_path": str(path), "architecture": None, "config": {}},
        "tokenizer": {"train": None},
    }
