"""`finetune convert`: a Llama checkpoint becomes the project's decoder and back."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import finetune.models  # noqa: F401  (registers the project's architectures in this process)
from tests.conftest import run_cli


def test_convert_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    ours = run_cli("convert", str(tmp_path / "llama"), "--out", str(tmp_path / "ours"))
    assert ours.returncode == 0, ours.stderr[-2000:]
    back = run_cli("convert", str(tmp_path / "ours"), "--out", str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr[-2000:]

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    models = [AutoModelForCausalLM.from_pretrained(tmp_path / d) for d in ("llama", "ours", "back")]
    assert models[1].config.model_type == "decoder" and models[2].config.model_type == "llama"
    with torch.no_grad():
        logits = [m.eval()(input_ids=ids).logits for m in models]
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[2], logits[0], rtol=1e-5, atol=1e-5)


def test_convert_refuses_an_unknown_source(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    result = run_cli("convert", str(tmp_path / "src"), "--out", str(tmp_path / "x"))
    assert result.returncode != 0
    assert "no config.json" in result.stderr and "Traceback" not in result.stderr
