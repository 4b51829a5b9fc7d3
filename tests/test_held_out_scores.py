"""The held-out scores of preference objectives, against log-probabilities computed here
one row at a time from the model's logits: pairs (which answer the model prefers) and
feedback rows (its log-probability of the desirable and of the undesirable answers)."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.evaluate import feedback_log_probs, held_out_scores, preference_accuracy

PAD = 0


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


def _log_prob(model: LlamaForCausalLM, prompt: list[int], answer: list[int]) -> float:
    """The answer's summed log-probability after the prompt, from one unpadded forward."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(ids).logits[0].log_softmax(-1)
    return sum(logits[len(prompt) + i - 1, token].item() for i, token in enumerate(answer))


def _rows(seed: int, count: int) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        p, a = torch.randint(2, 6, (2,), generator=gen).tolist()
        prompt = torch.randint(1, 50, (p,), generator=gen).tolist()
        rows.append((prompt, torch.randint(1, 50, (a,), generator=gen).tolist()))
    return rows


def test_feedback_log_probs_match_one_row_at_a_time(model: LlamaForCausalLM) -> None:
    rows = _rows(0, 7)
    labels = [True, False, True, True, False, False, True]
    data = datasets.Dataset.from_dict(
        {
            "prompt_ids": [p for p, _ in rows],
            "completion_ids": [a for _, a in rows],
            "label": labels,
        }
    )
    # Batches of 3 pad rows of different lengths together
    scores = feedback_log_probs(model, data, PAD, batch_size=3)
    expected = {True: [], False: []}
    for (prompt, answer), label in zip(rows, labels, strict=True):
        expected[label].append(_log_prob(model, prompt, answer))
    good = sum(expected[True]) / len(expected[True])
    bad = sum(expected[False]) / len(expected[False])
    assert scores["desirable_log_prob"] == pytest.approx(good, abs=1e-4)
    assert scores["undesirable_log_prob"] == pytest.approx(bad, abs=1e-4)
    assert scores["feedback_gap"] == pytest.approx(good - bad, abs=1e-4)
    only_good = data.filter(lambda row: row["label"])
    assert math.isnan(feedback_log_probs(model, only_good, PAD)["undesirable_log_prob"])


def test_preference_accuracy_matches_one_pair_at_a_time(model: LlamaForCausalLM) -> None:
    prompts, chosen, rejected = _rows(1, 9), _rows(2, 9), _rows(3, 9)
    data = datasets.Dataset.from_dict(
        {
            "prompt_ids": [p for p, _ in prompts],
            "chosen_ids": [a for _, a in chosen],
            "rejected_ids": [a for _, a in rejected],
        }
    )
    margins = [
        _log_prob(model, p, c) - _log_prob(model, p, r)
        for (p, _), (_, c), (_, r) in zip(prompts, chosen, rejected, strict=True)
    ]
    scores = held_out_scores(model, data, PAD, batch_size=4)
    assert scores == preference_accuracy(model, data, PAD, batch_size=4)
    assert scores["preference_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 9)
    assert scores["preference_margin"] == pytest.approx(sum(margins) / 9, abs=1e-4)
