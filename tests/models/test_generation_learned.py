"""Generation of trained models: with the cache equals without it, ours equals transformers'.

A dropped or misread cache gives no error: the full-sequence logits stay exact while each
generation step sees a truncated context (transformers 5.24 renamed the cache argument, and
that is how it broke). So these tests generate many tokens from models that have learned to
continue arithmetic progressions, where every token depends on the whole prefix.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import set_seed
from transformers.utils import logging as hf_logging

from finetune.models import FinetuneDecoderForCausalLM, FinetuneSeq2SeqForConditionalGeneration
from finetune.models.convert import decoder_from_hf

from . import learned, tiny

NEW_TOKENS = 24
MODES = {
    "greedy": {"do_sample": False},
    "beam": {"do_sample": False, "num_beams": 3},
    "sample": {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.95},
}
DECODERS = {
    "rope": {},
    "learned": {"positions": "learned", "norm": "layernorm", "ffn": "gelu"},
    # Scaled token embeddings (as BART does), else the fixed positions drown them at this size
    "sinusoidal": {"positions": "sinusoidal", "scale_embeddings": True, "norm_placement": "post"},
}


@pytest.fixture(scope="module")
def decoders() -> dict[str, FinetuneDecoderForCausalLM]:
    models = {}
    for name, overrides in DECODERS.items():
        tiny.seeded()
        model = FinetuneDecoderForCausalLM(tiny.decoder_config(**overrides))
        models[name] = learned.train_causal_lm(model)
    return models


@pytest.fixture(scope="module")
def seq2seq() -> FinetuneSeq2SeqForConditionalGeneration:
    tiny.seeded()
    model = FinetuneSeq2SeqForConditionalGeneration(tiny.seq2seq_config())
    return learned.train_seq2seq(model)


@pytest.fixture(scope="module")
def llama_pair() -> tuple[torch.nn.Module, FinetuneDecoderForCausalLM]:
    reference = learned.train_causal_lm(tiny.llama())
    return reference, decoder_from_hf(reference).eval()


def generate(model: torch.nn.Module, mode: str, **inputs: torch.Tensor) -> torch.Tensor:
    set_seed(7)  # the same draws for both runs of a sampling comparison
    options = {"max_new_tokens": NEW_TOKENS, "pad_token_id": tiny.PAD, **MODES[mode]}
    return model.generate(**inputs, **options)


def assert_varied(generated: torch.Tensor) -> None:
    """The premise: the model emits different tokens, not one token repeated."""
    for row in generated.tolist():
        assert len(set(row)) >= 4, f"degenerate generation {row}: the comparison proves little"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("positions", list(DECODERS))
def test_decoder_cached_generation_equals_uncached(decoders, positions: str, mode: str) -> None:
    model = decoders[positions]
    ids, mask = learned.prompts([5, 9, 7])
    cached = generate(model, mode, input_ids=ids, attention_mask=mask, use_cache=True)
    uncached = generate(model, mode, input_ids=ids, attention_mask=mask, use_cache=False)
    assert cached.shape == (3, ids.shape[1] + NEW_TOKENS)
    assert_varied(cached[:, ids.shape[1] :])
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


@pytest.mark.parametrize("mode", list(MODES))
def test_seq2seq_cached_generation_equals_uncached(seq2seq, mode: str) -> None:
    ids, mask = learned.prompts([8, 5, 8])
    cached = generate(seq2seq, mode, input_ids=ids, attention_mask=mask, use_cache=True)
    uncached = generate(seq2seq, mode, input_ids=ids, attention_mask=mask, use_cache=False)
    assert len(set(cached[:, 1:].flatten().tolist())) >= 8, cached
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_converted_llama_generates_like_transformers(llama_pair, mode: str) -> None:
    reference, ours = llama_pair
    ids, mask = learned.prompts([4, 9, 6])
    expected = generate(reference, mode, input_ids=ids, attention_mask=mask)
    actual = generate(ours, mode, input_ids=ids, attention_mask=mask)
    assert actual.shape[1] == ids.shape[1] + NEW_TOKENS  # all 24 tokens compared
    assert_varied(expected[:, ids.shape[1] :])
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_generation_logs_no_deprecation(decoders, seq2seq) -> None:
    # transformers warns through its own logger, once per message per process: clear that memo
    hf_logging.get_logger("transformers").warning_once.cache_clear()
    handler = _Records()
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    try:
        ids, mask = learned.prompts([5, 7])
        for model in (decoders["rope"], seq2seq):
            for mode in MODES:
                generate(model, mode, input_ids=ids, attention_mask=mask)
        with torch.no_grad():
            out = decoders["rope"](input_ids=ids, attention_mask=mask, use_cache=True)
    finally:
        root.removeHandler(handler)
    assert out.logits.shape[:2] == ids.shape
    deprecations = [message for message in handler.messages if "deprecat" in message.lower()]
    assert not deprecations, deprecations
