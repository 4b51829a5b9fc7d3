"""Tiny random reference models and configs for the model tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    MarianConfig,
    MarianMTModel,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from finetune.models import (
    FinetuneDecoderConfig,
    FinetuneEncoderConfig,
    FinetuneSeq2SeqConfig,
)

VOCAB = 96
PAD, BOS, EOS = 0, 1, 2

# Shapes shared by every tiny model: 2 layers, width 64, 4 query heads
SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
TOKENS = {"vocab_size": VOCAB, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def llama(attn: str = "sdpa", tie: bool = False, **overrides) -> LlamaForCausalLM:
    """Tiny Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    seeded()
    config = LlamaConfig(
        **SIZES,
        **TOKENS,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        attn_implementation=attn,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


def mistral(attn: str = "sdpa") -> MistralForCausalLM:
    """Tiny Mistral whose sliding window (6) is shorter than the test sequences."""
    seeded(1)
    config = MistralConfig(
        **SIZES,
        **TOKENS,
        num_key_value_heads=2,
        sliding_window=6,
        max_position_embeddings=128,
        attn_implementation=attn,
    )
    return MistralForCausalLM(config).eval()


def qwen2(attn: str = "sdpa") -> Qwen2ForCausalLM:
    """Tiny Qwen2 (q/k/v biases, no o_proj bias), with non-zero biases so they matter."""
    seeded(2)
    config = Qwen2Config(
        **SIZES,
        **TOKENS,
        num_key_value_heads=1,
        max_position_embeddings=128,
        attn_implementation=attn,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=0.1)
    return model


def bert_config(attn: str = "sdpa", **overrides) -> BertConfig:
    return BertConfig(
        **SIZES,
        vocab_size=VOCAB,
        pad_token_id=PAD,
        max_position_embeddings=64,
        type_vocab_size=2,
        attn_implementation=attn,
        **overrides,
    )


def bert_mlm(attn: str = "sdpa") -> BertForMaskedLM:
    seeded(3)
    return BertForMaskedLM(bert_config(attn)).eval()


def bert_classifier(attn: str = "sdpa") -> BertForSequenceClassification:
    seeded(4)
    return BertForSequenceClassification(bert_config(attn, num_labels=3)).eval()


def _seq2seq_sizes() -> dict:
    return {
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "max_position_embeddings": 64,
    }


def bart(attn: str = "sdpa", **overrides) -> BartForConditionalGeneration:
    """Tiny BART with a non-zero final_logits_bias, so the converter must carry it."""
    seeded(5)
    config = BartConfig(
        **_seq2seq_sizes(),
        vocab_size=VOCAB,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        forced_eos_token_id=EOS,
        scale_embedding=True,
        attn_implementation=attn,
        **overrides,
    )
    model = BartForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.1)
    return model


def marian(attn: str = "sdpa") -> MarianMTModel:
    seeded(6)
    config = MarianConfig(
        **_seq2seq_sizes(),
        vocab_size=VOCAB,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        forced_eos_token_id=EOS,
        scale_embedding=True,
        activation_function="swish",
        attn_implementation=attn,
    )
    return MarianMTModel(config).eval()


def decoder_config(**overrides) -> FinetuneDecoderConfig:
    fields = {**SIZES, **TOKENS, "num_key_value_heads": 2, "max_position_embeddings": 128}
    return FinetuneDecoderConfig(**{**fields, **overrides})


def encoder_config(**overrides) -> FinetuneEncoderConfig:
    fields = {**SIZES, **TOKENS, "max_position_embeddings": 128, "num_labels": 3}
    return FinetuneEncoderConfig(**{**fields, **overrides})


def seq2seq_config(**overrides) -> FinetuneSeq2SeqConfig:
    fields = {
        **SIZES,
        **TOKENS,
        "max_position_embeddings": 128,
        "decoder_start_token_id": EOS,
        "num_decoder_layers": 3,
    }
    return FinetuneSeq2SeqConfig(**{**fields, **overrides})


def token_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random ids that avoid the special tokens (pad, bos, eos)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def left_padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of random prompts and its attention mask."""
    width = max(lengths)
    ids = token_ids(len(lengths), width, seed)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, : width - length] = PAD
        mask[row, width - length :] = 1
    return ids, mask


def sharpen(model: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
    """Re-draw the output projection with a large std so logits have clear maxima.

    Random tiny models have near-uniform logits; greedy and beam comparisons between two
    numerically different paths (padded vs unpadded, cached vs not) would then flip on ties.
    """
    seeded(42)
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.copy_(torch.randn_like(head.weight) * std)
    return model
