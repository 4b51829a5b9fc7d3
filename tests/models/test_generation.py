"""generate(): token-for-token equality with the references, cache, sampling, left padding."""

from __future__ import annotations

import pytest
import torch
from transformers import set_seed

from finetune.models import FinetuneDecoderForCausalLM, FinetuneSeq2SeqForConditionalGeneration
from finetune.models.compat import output_cache
from finetune.models.convert import decoder_from_hf, seq2seq_from_bart

from . import tiny

GREEDY = {"do_sample": False, "max_new_tokens": 8}
BEAM = {"do_sample": False, "num_beams": 3, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def llama_pair() -> tuple[torch.nn.Module, FinetuneDecoderForCausalLM]:
    reference = tiny.sharpen(tiny.llama())
    return reference, decoder_from_hf(reference)


@pytest.fixture(scope="module")
def bart_pair() -> tuple[torch.nn.Module, FinetuneSeq2SeqForConditionalGeneration]:
    reference = tiny.sharpen(tiny.bart())
    return reference, seq2seq_from_bart(reference)


@pytest.mark.parametrize("mode", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_decoder_generates_like_llama(llama_pair, mode: dict) -> None:
    reference, ours = llama_pair
    ids, mask = tiny.left_padded([7, 4, 6])
    expected = reference.generate(input_ids=ids, attention_mask=mask, **mode)
    actual = ours.generate(input_ids=ids, attention_mask=mask, **mode)
    assert actual.shape[1] > ids.shape[1]
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_seq2seq_generates_like_bart(bart_pair, mode: dict) -> None:
    reference, ours = bart_pair
    ids, mask = tiny.left_padded([9, 5])
    expected = reference.generate(input_ids=ids, attention_mask=mask, **mode)
    actual = ours.generate(input_ids=ids, attention_mask=mask, **mode)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def decoder_variants() -> dict[str, FinetuneDecoderForCausalLM]:
    """Our decoder with each position encoding (learned/sinusoidal need position_ids right)."""
    variants = {
        "rope": tiny.decoder_config(),
        "learned": tiny.decoder_config(positions="learned", norm="layernorm", ffn="gelu"),
        "sinusoidal": tiny.decoder_config(positions="sinusoidal", norm_placement="post"),
    }
    models = {}
    for name, config in variants.items():
        tiny.seeded()
        models[name] = tiny.sharpen(FinetuneDecoderForCausalLM(config).eval())
    return models


@pytest.mark.parametrize("positions", ["rope", "learned", "sinusoidal"])
def test_decoder_cached_equals_uncached(positions: str) -> None:
    model = decoder_variants()[positions]
    ids, mask = tiny.left_padded([6, 8])
    cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **GREEDY)
    uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **GREEDY)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)

    # The step logits agree too, not only the argmax, with the cache passed under either name
    # (`cache` from transformers 5.24 on, `past_key_values` before)
    ids = tiny.token_ids(1, 9)
    for name in ("cache", "past_key_values"):
        with torch.no_grad():
            full = model(input_ids=ids).logits[:, -1]
            prefix = output_cache(model(input_ids=ids[:, :-1], use_cache=True))
            step = model(input_ids=ids[:, -1:], **{name: prefix}).logits[:, -1]
        torch.testing.assert_close(step, full, msg=name)


def test_seq2seq_cached_equals_uncached() -> None:
    # 2 encoder and 3 decoder layers: the decoder cache must not be sized by num_hidden_layers
    tiny.seeded()
    model = tiny.sharpen(FinetuneSeq2SeqForConditionalGeneration(tiny.seq2seq_config()).eval())
    ids, mask = tiny.left_padded([9, 5])
    cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **GREEDY)
    uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **GREEDY)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    beams = model.generate(input_ids=ids, attention_mask=mask, **BEAM)
    assert beams.shape[0] == 2


@pytest.mark.parametrize("positions", ["rope", "learned", "sinusoidal"])
def test_left_padded_batch_equals_one_by_one(positions: str) -> None:
    model = decoder_variants()[positions]
    lengths = [3, 8, 5]
    ids, mask = tiny.left_padded(lengths, seed=3)
    batched = model.generate(input_ids=ids, attention_mask=mask, **GREEDY)
    width = ids.shape[1]
    for row, length in enumerate(lengths):
        single = model.generate(input_ids=ids[row : row + 1, width - length :], **GREEDY)
        torch.testing.assert_close(batched[row, width - length :], single[0], rtol=0, atol=0)


def test_sampling_is_seeded_and_honours_filters(llama_pair) -> None:
    _, ours = llama_pair
    ids, mask = tiny.left_padded([5, 5])
    options = {"do_sample": True, "temperature": 0.7, "top_k": 10, "top_p": 0.9}
    runs = []
    for _ in range(2):
        set_seed(1234)
        runs.append(ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, **options))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert runs[0].shape == (2, ids.shape[1] + 6)

    # top_k=1 leaves one candidate: sampling must then equal greedy decoding
    set_seed(0)
    top1 = ours.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=1, **_steps())
    greedy = ours.generate(input_ids=ids, attention_mask=mask, **GREEDY)
    torch.testing.assert_close(top1, greedy, rtol=0, atol=0)


def _steps() -> dict:
    return {"max_new_tokens": GREEDY["max_new_tokens"]}
