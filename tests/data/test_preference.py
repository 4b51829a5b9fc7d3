"""The preference format: prompt / chosen / rejected rows as text, chat turns or whole
conversations with an implicit prompt, split into the ids TRL's trainers read."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config.data import PreferenceFormat
from finetune.data.formats import BadRow, EncodedPair, encode_row, prompt_and_answer
from finetune.data.summary import format_summary
from finetune.errors import DataError
from tests.data.helpers import ids, prepare_file

FMT = PreferenceFormat()
TEXT_ROW = {"prompt": "what is the capital of france?", "chosen": " paris", "rejected": " the cat"}
USER = {"role": "user", "content": "what is the capital of france"}
CHOSEN = {"role": "assistant", "content": "paris"}
REJECTED = {"role": "assistant", "content": "the big red cat"}


def test_text_pair_splits_at_the_prompt_and_ends_with_eos(tok) -> None:
    pair = encode_row(TEXT_ROW, FMT, tok)
    assert pair.prompt_ids == ids(tok, TEXT_ROW["prompt"])
    assert pair.chosen_ids == [*ids(tok, " paris"), tok.eos_token_id]
    assert pair.rejected_ids == [*ids(tok, " the cat"), tok.eos_token_id]


@pytest.mark.parametrize("name", ["tok", "smol"])
def test_chat_forms_agree_and_answers_end_at_the_end_of_turn(name: str, request) -> None:
    """Explicit prompt turns, an implicit prompt (two whole conversations) and plain-text
    answers to a chat prompt give the same pair; each answer is what the model generates
    after the generation prompt, up to and including its end-of-turn token (not the
    newline ChatML writes after it), also where pad == eos (SmolLM2)."""
    tokenizer = request.getfixturevalue(name)
    explicit = {"prompt": [USER], "chosen": [CHOSEN], "rejected": [REJECTED]}
    implicit = {"chosen": [USER, CHOSEN], "rejected": [USER, REJECTED]}
    plain = {"prompt": [USER], "chosen": "paris", "rejected": "the big red cat"}
    pairs = [encode_row(row, FMT, tokenizer) for row in (explicit, implicit, plain)]
    assert pairs[0] == pairs[1] == pairs[2]
    pair = pairs[0]
    prompt = tokenizer.apply_chat_template([USER], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(pair.prompt_ids) == prompt
    assert tokenizer.decode(pair.chosen_ids) == "paris<|im_end|>"
    assert tokenizer.decode(pair.rejected_ids) == "the big red cat<|im_end|>"
    # What exact match generates from and compares with
    assert prompt_and_answer(explicit, FMT, tokenizer) == (prompt, "paris")


def test_multi_turn_prompt_keeps_earlier_assistant_turns_in_the_prompt(tok) -> None:
    history = [USER, CHOSEN, {"role": "user", "content": "and of the dog"}]
    pair = encode_row({"prompt": history, "chosen": "the house", "rejected": "a tree"}, FMT, tok)
    prompt = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    assert tok.decode(pair.prompt_ids) == prompt
    assert tok.decode(pair.chosen_ids).startswith("the house")


def test_system_prompt_and_role_names(tok) -> None:
    fmt = PreferenceFormat(system_prompt="you are helpful", role_names={"human": "user"})
    row = {"prompt": [{"role": "human", "content": "hello"}], "chosen": "hi", "rejected": "no"}
    pair = encode_row(row, fmt, tok)
    assert tok.decode(pair.prompt_ids).startswith("<|im_start|>system\nyou are helpful")


def test_answers_sharing_their_start_keep_it(tok) -> None:
    """The shared start of two answers is part of both, not of the prompt."""
    pair = encode_row(
        {"prompt": "the cat", "chosen": " sat on a mat", "rejected": " sat"}, FMT, tok
    )
    assert pair.prompt_ids == ids(tok, "the cat")
    assert pair.chosen_ids[: len(ids(tok, " sat"))] == pair.rejected_ids[: len(ids(tok, " sat"))]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "x", "chosen": "a", "rejected": "a"}, "are the same answer"),
        ({"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
        ({"prompt": "x", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "x", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
        ({"prompt": "x", "chosen": [CHOSEN], "rejected": [REJECTED]}, "give the prompt as turns"),
        ({"prompt": [USER], "chosen": [CHOSEN], "rejected": "b"}, "both be strings or both"),
        ({"prompt": [CHOSEN], "chosen": "a", "rejected": "b"}, "no user turn"),
        ({"prompt": [USER, CHOSEN], "chosen": "a", "rejected": "b"}, "ends with an assistant"),
        ({"prompt": [USER], "chosen": [USER], "rejected": [REJECTED]}, "start with an assistant"),
        ({"chosen": [USER, CHOSEN], "rejected": [USER, CHOSEN]}, "are the same answer"),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "empty list of turns"),
        ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "bot"),
    ],
)
def test_bad_rows(tok, row, reason: str) -> None:
    with pytest.raises(BadRow, match=reason):
        encode_row(row, FMT, tok)


def _prepare(tmp_path: Path, tok, rows, **data):
    return prepare_file(tmp_path / "pairs.jsonl", rows, "preference", tok, **data)


def test_bad_rows_are_reported_by_file_and_line(tmp_path: Path, tok) -> None:
    rows = [TEXT_ROW, {"prompt": "x", "chosen": "a", "rejected": "a"}, TEXT_ROW]
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: chosen and rejected are the same"):
        _prepare(tmp_path, tok, rows)
    data = _prepare(tmp_path, tok, rows, on_bad_row="skip")
    assert (data.sources[0].stats.bad, data.sources[0].stats.kept) == (1, 2)


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_sides(tmp_path: Path, tok, side: str) -> None:
    row = {"prompt": "the big red dog sat under a tree", "chosen": " it ran", "rejected": " no"}
    full = encode_row(row, FMT, tok)
    limit = len(full.prompt_ids) + 2
    data = _prepare(tmp_path, tok, [row], max_length=limit, truncation=side)
    kept = data.train[0]
    for answer in ("chosen_ids", "rejected_ids"):
        assert len(kept["prompt_ids"]) + len(kept[answer]) <= limit
    if side == "right":  # the prompt whole, the answers cut at their end
        assert kept["prompt_ids"] == full.prompt_ids
        assert kept["chosen_ids"] == full.chosen_ids[:2]
    else:  # the answers whole, the prompt cut at its start as far as the longer one needs
        assert kept["chosen_ids"] == full.chosen_ids
        longer = max(len(full.chosen_ids), len(full.rejected_ids))
        assert kept["prompt_ids"] == full.prompt_ids[-(limit - longer) :]
    assert data.sources[0].stats.truncated == 1


def test_prompt_filling_max_length_drops_the_row(tmp_path: Path, tok) -> None:
    long = {"prompt": "the cat sat on a mat " * 6, "chosen": " red", "rejected": " blue"}
    data = _prepare(tmp_path, tok, [long, TEXT_ROW], max_length=16)
    stats = data.sources[0].stats
    assert (stats.kept, stats.no_trainable) == (1, 1)


def test_pairs_are_cached_and_summarized(tmp_path: Path, tok) -> None:
    first = _prepare(tmp_path, tok, [TEXT_ROW] * 3)
    second = _prepare(tmp_path, tok, [TEXT_ROW] * 3)
    assert not first.sources[0].cached and second.sources[0].cached
    assert second.train[0] == first.train[0]
    assert set(first.train.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids", "length"}
    pair = EncodedPair(
        **{k: first.train[0][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    )
    assert first.train[0]["length"] == len(pair.prompt_ids) + len(pair.rejected_ids)
    assert "train: 3 pairs" in format_summary(first)
