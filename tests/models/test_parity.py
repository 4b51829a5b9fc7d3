"""Converted checkpoints compute the same logits as the transformers reference models."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config

from finetune.models import (
    FinetuneDecoderForCausalLM,
    FinetuneDecoderForSequenceClassification,
    FinetuneEncoderForMaskedLM,
    FinetuneEncoderForSequenceClassification,
    FinetuneSeq2SeqForConditionalGeneration,
)
from finetune.models.convert import (
    ConversionError,
    decoder_config_from_hf,
    decoder_from_hf,
    decoder_to_llama,
    encoder_from_bert,
    llama_config_from_decoder,
    seq2seq_from_bart,
    seq2seq_from_marian,
)

from . import tiny

ATTENTION = ["eager", "sdpa"]
DECODER_SOURCES = {"llama": tiny.llama, "mistral": tiny.mistral, "qwen2": tiny.qwen2}


def logits(model: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("source", sorted(DECODER_SOURCES))
def test_decoder_matches_source(source: str, attn: str) -> None:
    reference = DECODER_SOURCES[source](attn)
    ours = decoder_from_hf(reference)
    assert isinstance(ours, FinetuneDecoderForCausalLM)
    assert ours.config._attn_implementation == attn
    # 16 tokens: longer than Mistral's sliding window of 6, so the window is exercised
    ids, mask = tiny.left_padded([16, 11, 16])
    expected = logits(reference, input_ids=ids, attention_mask=mask)
    actual = logits(ours, input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real])


def test_decoder_loss_matches_llama() -> None:
    reference = tiny.llama()
    ours = decoder_from_hf(reference)
    ids = tiny.token_ids(2, 12)
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        expected = reference(input_ids=ids, labels=labels).loss
        actual = ours(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("num_labels", [1, 3])
def test_decoder_classifier_matches_llama(attn: str, num_labels: int) -> None:
    """The sequence-classification head (a reward model with one label) reads the same last
    token as transformers' Llama: right-padded batches, with or without the mask."""
    tiny.seeded()
    source = tiny.llama(attn)
    reference = LlamaForSequenceClassification(
        LlamaConfig(**{**source.config.to_dict(), "num_labels": num_labels})
    ).eval()
    ours = decoder_from_hf(reference)
    assert isinstance(ours, FinetuneDecoderForSequenceClassification)
    assert ours.config.num_labels == num_labels
    ids = tiny.token_ids(3, 10)
    mask = torch.ones_like(ids)
    for row, length in enumerate([10, 7, 4]):  # right padding, as TRL's collators pad
        ids[row, length:] = reference.config.pad_token_id
        mask[row, length:] = 0
    expected = logits(reference, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(logits(ours, input_ids=ids, attention_mask=mask), expected)
    torch.testing.assert_close(logits(ours, input_ids=ids), expected)
    labels = torch.tensor([0.5, -1.0, 2.0]) if num_labels == 1 else torch.tensor([0, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=ids, attention_mask=mask, labels=labels).loss,
            reference(input_ids=ids, attention_mask=mask, labels=labels).loss,
        )


@pytest.mark.parametrize("attn", ATTENTION)
def test_llama_round_trip(attn: str) -> None:
    reference = tiny.llama(attn, tie=True)
    back = decoder_to_llama(decoder_from_hf(reference))
    assert type(back).__name__ == "LlamaForCausalLM"
    ids = tiny.token_ids(2, 10)
    torch.testing.assert_close(logits(back, input_ids=ids), logits(reference, input_ids=ids))
    assert back.lm_head.weight is back.model.embed_tokens.weight


def test_decoder_to_llama_names_incompatible_fields() -> None:
    config = tiny.decoder_config(ffn="gelu", norm_placement="post", qkv_bias=True)
    with pytest.raises(ConversionError) as error:
        llama_config_from_decoder(config)
    message = str(error.value)
    assert "ffn='gelu' (Llama needs 'swiglu')" in message
    assert "norm_placement='post' (Llama needs 'pre')" in message
    assert "qkv_bias=True with attention_out_bias=False" in message


def test_qwen2_mixed_sliding_layers_are_refused() -> None:
    config = Qwen2Config(
        **tiny.SIZES, use_sliding_window=True, sliding_window=4, max_window_layers=1
    )
    with pytest.raises(ConversionError, match="layer_types mixes"):
        decoder_config_from_hf(config)


@pytest.mark.parametrize("attn", ATTENTION)
def test_bert_masked_lm_matches(attn: str) -> None:
    reference = tiny.bert_mlm(attn)
    ours = encoder_from_bert(reference)
    assert isinstance(ours, FinetuneEncoderForMaskedLM)
    ids = tiny.token_ids(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    real = mask.bool()
    torch.testing.assert_close(logits(ours, **inputs)[real], logits(reference, **inputs)[real])


@pytest.mark.parametrize("attn", ATTENTION)
def test_bert_classifier_matches(attn: str) -> None:
    reference = tiny.bert_classifier(attn)
    ours = encoder_from_bert(reference)
    assert isinstance(ours, FinetuneEncoderForSequenceClassification)
    assert ours.config.num_labels == 3
    ids = tiny.token_ids(3, 12)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
        actual = ours(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.loss, expected.loss)


@pytest.mark.parametrize("attn", ATTENTION)
def test_bart_matches(attn: str) -> None:
    reference = tiny.bart(attn)
    ours = seq2seq_from_bart(reference)
    assert isinstance(ours, FinetuneSeq2SeqForConditionalGeneration)
    source, source_mask = tiny.left_padded([12, 9])
    labels = tiny.token_ids(2, 7, seed=1)
    with torch.no_grad():
        expected = reference(input_ids=source, attention_mask=source_mask, labels=labels)
        actual = ours(input_ids=source, attention_mask=source_mask, labels=labels)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(actual.loss, expected.loss)


@pytest.mark.parametrize("attn", ATTENTION)
def test_marian_matches(attn: str) -> None:
    reference = tiny.marian(attn)
    ours = seq2seq_from_marian(reference)
    assert ours.config.sinusoidal_layout == "split"
    source = tiny.token_ids(2, 12)
    target = tiny.token_ids(2, 6, seed=1)
    inputs = {"input_ids": source, "decoder_input_ids": target}
    torch.testing.assert_close(logits(ours, **inputs), logits(reference, **inputs))
