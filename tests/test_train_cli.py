"""End-to-end: the CLI trains in a subprocess and leaves a loadable Hugging Face model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import run_cli, tiny_config, write_config


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = tiny_config(tmp)
    cfg["data"]["eval_ratio"] = 0.1
    cfg["train"].update(max_steps=40, eval_steps=20)
    cfg["output"]["save_steps"] = 40
    path = write_config(tmp / "run.yaml", cfg)
    result = run_cli("train", str(path), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


def test_output_directory_layout(trained: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run_config.yaml"):
        assert (trained / name).is_file(), name
    info = json.loads((trained / "run_info.json").read_text())
    assert info["global_step"] == 40
    assert info["world_size"] == 1


def test_training_loss_falls(trained: Path) -> None:
    losses = [m["loss"] for m in _metrics(trained) if "loss" in m]
    assert len(losses) == 8  # every 5 of 40 steps
    # A 300-token vocabulary starts near ln(300) = 5.7; the word corpus is learnable.
    assert losses[0] > 4.5
    assert losses[-1] < 0.6 * losses[0], losses


def test_saved_model_matches_the_trained_one(trained: Path) -> None:
    final = AutoModelForCausalLM.from_pretrained(trained).eval()
    # The step-40 checkpoint was written by the Trainer from the same in-memory weights.
    checkpoint = AutoModelForCausalLM.from_pretrained(trained / "checkpoints/checkpoint-40").eval()
    tokenizer = AutoTokenizer.from_pretrained(trained)
    batch = tokenizer(["the cat sat on a mat", "a big red tree"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(
            final(**batch).logits, checkpoint(**batch).logits, rtol=0, atol=0
        )
    eval_losses = [m["eval_loss"] for m in _metrics(trained) if "eval_loss" in m]
    info = json.loads((trained / "run_info.json").read_text())
    # The final evaluation ran on the model at the end of training.
    assert info["metrics"]["eval_loss"] == pytest.approx(eval_losses[-1], abs=1e-6)


def test_existing_output_dir_is_refused(trained: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["output"]["dir"] = str(trained)
    before = (trained / "model.safetensors").read_bytes()
    result = run_cli("train", str(write_config(tmp_path / "again.yaml", cfg)))
    assert result.returncode == 2
    assert "already exists and is not empty; pass --overwrite" in result.stderr
    assert "Traceback" not in result.stderr
    assert (trained / "model.safetensors").read_bytes() == before


def test_overwrite_refuses_a_directory_finetune_did_not_write(tmp_path: Path) -> None:
    precious = tmp_path / "out" / "notes.txt"
    precious.parent.mkdir()
    precious.write_text("keep me")
    path = write_config(tmp_path / "run.yaml", tiny_config(tmp_path))
    result = run_cli("train", str(path), "--overwrite")
    assert result.returncode == 2
    assert "was not written by a finetune run" in result.stderr
    assert precious.read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU")
def test_preflight_refuses_before_anything_is_written(tmp_path: Path) -> None:
    path = write_config(tmp_path / "run.yaml", tiny_config(tmp_path))
    result = run_cli("train", str(path), "--set", "train.precision=fp16")
    assert result.returncode == 2
    assert "fp16 mixed precision needs a CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
