"""The project's models load with transformers' own tensor parallelism (`tp_plan="auto"`,
2 ranks under torchrun, gloo on the CPU) and give the logits of the unsharded model: the
plans name only modules that exist, and a tied embedding is never half sharded."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from finetune.models import (
    FinetuneDecoderConfig,
    FinetuneDecoderForCausalLM,
    FinetuneSeq2SeqConfig,
    FinetuneSeq2SeqForConditionalGeneration,
)
from tests.conftest import REPO
from tests.distributed.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SIZES = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=96, pad_token_id=0
)
MODELS = {
    "decoder-gelu": lambda: FinetuneDecoderForCausalLM(
        FinetuneDecoderConfig(
            **SIZES,
            num_hidden_layers=2,
            num_key_value_heads=2,
            ffn="gelu",
            tie_word_embeddings=False,
        )
    ),
    "decoder-swiglu-tied": lambda: FinetuneDecoderForCausalLM(
        FinetuneDecoderConfig(**SIZES, num_hidden_layers=2, tie_word_embeddings=True)
    ),
    "seq2seq-tied": lambda: FinetuneSeq2SeqForConditionalGeneration(
        FinetuneSeq2SeqConfig(**SIZES, num_hidden_layers=2, decoder_start_token_id=0)
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_tp_plan_auto_gives_the_unsharded_logits(tmp_path: Path, name: str) -> None:
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    model.save_pretrained(tmp_path / "model")
    result = subprocess.run(
        [
            *("torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())),
            str(REPO / "tests" / "distributed" / "hf_tp_worker.py"),
            *(str(tmp_path / "model"), str(tmp_path / "logits.pt")),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sharded = torch.load(tmp_path / "logits.pt")

    auto = AutoModelForSeq2SeqLM if model.config.is_encoder_decoder else AutoModelForCausalLM
    reference = auto.from_pretrained(tmp_path / "model").eval()
    ids = torch.arange(3, 19).reshape(2, 8) % model.config.vocab_size
    inputs = {"input_ids": ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids[:, :5]
    with torch.no_grad():
        expected = reference(**inputs).logits
    torch.testing.assert_close(sharded, expected, atol=1e-5, rtol=1e-5)
