"""Tiny models that have learned something, so that generation has real choices to get wrong.

A random model's greedy output is mostly one repeated token, which a generation bug that drops
the cache (each step seeing only its newest token) can reproduce by accident. These models are
trained for a few dozen steps on arithmetic progressions (3 7 11 15 ...): the next token depends
on the whole prefix, and the generated tokens differ from step to step.
"""

from __future__ import annotations

import json
from pathlib import Path

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


# What `save_generation_cases` compares: the greedy and beam tokens of each saved model
CASE_MODES = {"greedy": {"do_sample": False}, "beam": {"do_sample": False, "num_beams": 3}}


def save_generation_cases(root: str | Path) -> list[str]:
    """Train a decoder and a seq2seq model, save each with its prompts and generated tokens.

    Each folder gets the model (with its remote code), `inputs.pt`, `case.json` (the Auto
    class and generation options) and `expected_tokens.pt`, generated here by finetune's own
    classes: what a remote-code load under any transformers release must reproduce.
    """
    from finetune.models import FinetuneDecoderForCausalLM, FinetuneSeq2SeqForConditionalGeneration

    tiny.seeded()
    decoder = train_causal_lm(FinetuneDecoderForCausalLM(tiny.decoder_config()))
    tiny.seeded()
    seq2seq = train_seq2seq(FinetuneSeq2SeqForConditionalGeneration(tiny.seq2seq_config()))
    cases = [
        ("decoder", "AutoModelForCausalLM", decoder, prompts([5, 9, 7])),
        ("seq2seq", "AutoModelForSeq2SeqLM", seq2seq, prompts([8, 5, 8])),
    ]
    folders = []
    for name, auto_class, model, (ids, mask) in cases:
        folder = Path(root) / name
        model.save_pretrained(folder)
        inputs = {"input_ids": ids, "attention_mask": mask}
        options = {"max_new_tokens": 24, "pad_token_id": tiny.PAD}
        expected = {
            mode: model.generate(**inputs, **options, **extra) for mode, extra in CASE_MODES.items()
        }
        torch.save(inputs, folder / "inputs.pt")
        torch.save(expected, folder / "expected_tokens.pt")
        case = {"auto_class": auto_class, "options": options, "modes": CASE_MODES}
        (folder / "case.json").write_text(json.dumps(case))
        folders.append(str(folder))
    return folders
