"""Packed batches (position_ids restarting per sample, no attention_mask) == samples one by one."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from finetune.models import (
    FinetuneDecoderForCausalLM,
    FinetuneEncoderForMaskedLM,
    FinetuneSeq2SeqForConditionalGeneration,
)

from . import tiny

LENGTHS = [5, 7, 4]


def pack(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row holding every sample, and position ids restarting at 0 for each."""
    ids = torch.cat(samples).unsqueeze(0)
    positions = torch.cat([torch.arange(len(s)) for s in samples]).unsqueeze(0)
    return ids, positions


def samples(seed: int = 0) -> list[torch.Tensor]:
    return [tiny.token_ids(1, n, seed=seed + i)[0] for i, n in enumerate(LENGTHS)]


def per_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of each position but the last, (seq - 1,)."""
    return F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")


DECODERS = {
    "rope": {},
    "learned": {"positions": "learned", "norm": "layernorm", "ffn": "gelu"},
    "sliding": {"sliding_window": 3},
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_decoder_packed_equals_separate(variant: str, attn: str) -> None:
    tiny.seeded()
    config = tiny.decoder_config(**DECODERS[variant], attn_implementation=attn)
    model = FinetuneDecoderForCausalLM(config)
    # Training mode with use_cache left on (config default), as a careless loop would run it:
    # packing must still be detected. No dropout is configured, so outputs are deterministic.
    model.train()
    parts = samples()
    ids, positions = pack(parts)
    packed = model(input_ids=ids, position_ids=positions).logits

    start = 0
    for part in parts:
        alone = model(input_ids=part.unsqueeze(0)).logits
        segment = packed[:, start : start + len(part)]
        torch.testing.assert_close(segment, alone)
        torch.testing.assert_close(
            per_token_loss(segment, part.unsqueeze(0)), per_token_loss(alone, part.unsqueeze(0))
        )
        start += len(part)


def test_decoder_packed_loss_matches_mean_of_samples() -> None:
    tiny.seeded()
    model = FinetuneDecoderForCausalLM(tiny.decoder_config()).eval()
    parts = samples(seed=5)
    ids, positions = pack(parts)
    # Labels: -100 on each sample's first token, so no sample predicts across a boundary
    labels = ids.clone()
    start = 0
    for part in parts:
        labels[0, start] = -100
        start += len(part)
    with torch.no_grad():
        packed_loss = model(input_ids=ids, position_ids=positions, labels=labels).loss
        token_losses = [
            per_token_loss(model(input_ids=p.unsqueeze(0)).logits, p.unsqueeze(0)) for p in parts
        ]
    torch.testing.assert_close(packed_loss, torch.cat(token_losses).mean())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_encoder_packed_equals_separate(attn: str) -> None:
    tiny.seeded()
    config = tiny.encoder_config(
        positions="learned", norm="layernorm", norm_placement="post", attn_implementation=attn
    )
    model = FinetuneEncoderForMaskedLM(config).eval()
    parts = samples(seed=9)
    ids, positions = pack(parts)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits
        start = 0
        for part in parts:
            alone = model(input_ids=part.unsqueeze(0)).logits
            torch.testing.assert_close(packed[:, start : start + len(part)], alone)
            start += len(part)


def test_seq2seq_packed_sources_equal_separate() -> None:
    tiny.seeded()
    model = FinetuneSeq2SeqForConditionalGeneration(tiny.seq2seq_config()).eval()
    parts = samples(seed=13)
    ids, positions = pack(parts)
    encoder = model.get_encoder()
    with torch.no_grad():
        packed = encoder(input_ids=ids, position_ids=positions).last_hidden_state
        start = 0
        for part in parts:
            alone = encoder(input_ids=part.unsqueeze(0)).last_hidden_state
            torch.testing.assert_close(packed[:, start : start + len(part)], alone)
            start += len(part)
