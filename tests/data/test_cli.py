"""The data commands end to end, in subprocesses: preprocess, tokenizer train, and a
training run that stops on a bad row or trains on packed chat data."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from finetune.config.data import DataConfig, TokenizerConfig
from finetune.data.tokenizer import train_tokenizer_with_report
from finetune.errors import ConfigError
from tests.conftest import run_cli, tiny_config, write_config
from tests.data.helpers import write_jsonl


def _env(tmp_path: Path) -> dict[str, str]:
    return {"FINETUNE_CACHE": str(tmp_path / "cache")}


COLOURS = {"cat": "red", "dog": "blue", "tree": "green", "house": "red", "mat": "blue"}


def _chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Learnable conversations: a fixed colour for each thing."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        thing = rng.choice(sorted(COLOURS))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"what colour is the {thing}"},
                    {"role": "assistant", "content": f"the {thing} is {COLOURS[thing]}"},
                ]
            }
        )
    return rows


def test_bad_row_stops_before_training_and_keeps_the_old_output(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    rows = [{"prompt": "the cat", "completion": " sat"}] * 20
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with path.open("a") as f:
        f.write(json.dumps({"prompt": "the dog"}) + "\n")  # line 21: no completion
    cfg["data"]["train"] = [{"path": str(path), "format": "completion"}]
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_config.yaml").write_text("old run\n")
    (out / "model.safetensors").write_bytes(b"old weights")
    result = run_cli(
        "train",
        str(write_config(tmp_path / "run.yaml", cfg)),
        "--overwrite",
        cwd=tmp_path,
        **_env(tmp_path),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{path}:21: missing field 'completion'" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "run_config.yaml"]
    assert (out / "run_config.yaml").read_text() == "old run\n"
    assert (out / "model.safetensors").read_bytes() == b"old weights"


def test_preprocess_prints_a_summary_and_fills_the_cache(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    good = write_jsonl(tmp_path / "chat.jsonl", [*_chat_rows(30), {"messages": []}])
    cfg["data"].update(on_bad_row="skip", eval_ratio=0.1)
    cfg["data"]["train"].append({"path": str(good), "format": "chat", "samples": 60})
    config = write_config(tmp_path / "run.yaml", cfg)
    first = run_cli("preprocess", str(config), cwd=tmp_path, **_env(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stdout.splitlines()
    text_row = next(line for line in lines if line.startswith("data.train[0]"))
    chat_row = next(line for line in lines if line.startswith("data.train[1]"))
    assert text_row.split()[:8] == ["data.train[0]", "text", "400", "0", "0", "0", "400", "360"]
    assert chat_row.split()[:9] == ["data.train[1]", "chat", "31", "1", "0", "0", "30", "60", "3"]
    assert f"{good}:31: field 'messages' is empty" in first.stdout
    assert "sample length (tokens), train:" in first.stdout
    assert not (tmp_path / "out").exists()  # preprocess writes no run output

    second = run_cli("preprocess", str(config), cwd=tmp_path, **_env(tmp_path))
    assert second.returncode == 0, second.stderr[-2000:]
    assert [
        line.split()[-2] for line in second.stdout.splitlines() if line.startswith("data.")
    ] == [
        "hit",
        "hit",
    ]


def test_hub_dataset_offline_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["data"]["train"] = [{"path": "finetune-tests/no-such-dataset"}]
    start = time.monotonic()
    result = run_cli(
        "preprocess",
        str(write_config(tmp_path / "run.yaml", cfg)),
        cwd=tmp_path,
        HF_HUB_OFFLINE="1",
        **_env(tmp_path),
    )
    assert result.returncode == 2
    assert "finetune-tests/no-such-dataset" in result.stderr
    assert time.monotonic() - start < 60


def test_tokenizer_train_command(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    config = write_config(tmp_path / "run.yaml", cfg)
    result = run_cli(
        "tokenizer", "train", str(config), "--out", str(tmp_path / "tok"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out compression:" in result.stdout
    bytes_per_token = float(result.stdout.split("compression: ")[1].split()[0])
    assert 1.5 < bytes_per_token < 8  # a 300-token BPE on a 18-word corpus
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tokenizer) == 300 and tokenizer.chat_template is not None
    assert tokenizer.decode(tokenizer("the cat sat")["input_ids"]) == "the cat sat"
    with pytest.raises(ConfigError, match=r"tokenizer\.train: not set"):
        train_tokenizer_with_report(TokenizerConfig(), DataConfig(train=[{"path": "x.txt"}]))


def test_packed_chat_training_run(tmp_path: Path) -> None:
    """The runner trains and evaluates on packed chat rows; the loss falls and the saved
    tokenizer carries the chat template used for training."""
    cfg = tiny_config(tmp_path)
    path = write_jsonl(tmp_path / "chat.jsonl", _chat_rows(400))
    cfg["data"] = {
        "train": [{"path": str(path), "format": "chat"}],
        "max_length": 128,
        "packing": True,
        "eval_ratio": 0.1,
    }
    cfg["train"].update(max_steps=30, micro_batch_size=4)
    result = run_cli(
        "train", str(write_config(tmp_path / "run.yaml", cfg)), cwd=tmp_path, **_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    # From about ln(300) = 5.7: the answers are a fixed template around a learnable colour.
    assert losses[-1] < 0.5 * losses[0], losses
    assert [m["eval_loss"] for m in metrics if "eval_loss" in m][-1] < 0.5 * losses[0]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template
