"""Tiny models that have learned something, so that generation has real choices to get wrong.

A random model's greedy output is mostly one repeated token, which a generation bug that drops
the cache (each step seeing only its newest token) can reproduce by accident. These models are
trained for a few dozen steps on arithmetic progressions (3 7 11 15 ...): the next token depends
on the whole prefix, and the generated tokens differ from step to step.
"""

from __future__ import annotations

import torch

from . import tiny

FIRST, SPAN = 3, tiny.VOCAB - 3  # ids 3..95: the special tokens (0, 1, 2) stay out


def progressions(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) rows `FIRST + (start + i * step) % SPAN`, with steps 1-5."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, SPAN, (batch, 1), generator=generator)
    step = torch.randint(1, 6, (batch, 1), generator=generator)
    return FIRST + (start + step * torch.arange(length)) % SPAN


def prompts(lengths: list[int], seed: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded progression prompts of the given lengths, with their attention mask."""
    width = max(lengths)
    ids = progressions(len(lengths), width, seed)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row] = torch.roll(ids[row], width - length)
        ids[row, : width - length] = tiny.PAD
        mask[row, width - length :] = 1
    return ids, mask


def train_causal_lm(model: torch.nn.Module, steps: int = 60, seed: int = 0) -> torch.nn.Module:
    """Teach a causal LM to continue progressions; returns it in eval mode."""
    return _train(model, steps, seed, lambda ids: {"input_ids": ids, "labels": ids})


def train_seq2seq(model: torch.nn.Module, steps: int = 60, seed: int = 0) -> torch.nn.Module:
    """Teach a seq2seq model to continue the source progression in the target."""

    def batch(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": ids[:, :8], "labels": ids[:, 8:].contiguous()}

    return _train(model, steps, seed, batch)


def _train(model: torch.nn.Module, steps: int, seed: int, make_batch) -> torch.nn.Module:
    tiny.seeded(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        loss = model(**make_batch(progressions(32, 16, seed=seed * 1000 + step))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # Guards the premise of the tests that use these models: they learned something
    assert losses[-1] < 0.6 * losses[0], losses
    return model.eval()
