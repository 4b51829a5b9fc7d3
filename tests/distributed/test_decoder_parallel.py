"""The project's decoder (tied input/output embeddings) trains the same in a 2-stage pipeline
as in one process: the embedding and the output projection live on different stages and
DeepSpeed keeps them one matrix (TiedLayerSpec)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import finetune.models  # noqa: F401  (registers the decoder with AutoModel)
from tests.conftest import run_cli
from tests.distributed.helpers import launch, losses, needs_launcher, run_config, tail

pytestmark = [pytest.mark.slow, pytest.mark.distributed, needs_launcher]

DECODER = {
    "architecture": "decoder",
    "config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def test_tied_decoder_pipeline_matches_one_process(tmp_path) -> None:
    single = run_config(tmp_path, "single", 4, model=DECODER)
    result = run_cli("train", str(single))
    assert result.returncode == 0, result.stderr[-3000:]
    piped = run_config(tmp_path, "pipeline", 4, model=DECODER, distributed={"pipeline_stages": 2})
    result = launch(piped, 29781)
    assert result.returncode == 0, tail(result)
    assert losses(piped.parent / "out") == pytest.approx(losses(single.parent / "out"), abs=1e-4)
    model = AutoModelForCausalLM.from_pretrained(piped.parent / "out")
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    reference = AutoModelForCausalLM.from_pretrained(single.parent / "out")
    torch.testing.assert_close(model.lm_head.weight, reference.lm_head.weight, atol=1e-5, rtol=0)
