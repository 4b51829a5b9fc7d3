"""The feedback format (KTO's unpaired data): a prompt, one answer and whether it is
desirable, split into the ids TRL's KTOTrainer reads, exactly as the preference format
splits the same prompt and answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config.data import FeedbackFormat, PreferenceFormat
from finetune.data.formats import BadRow, encode_row
from finetune.data.summary import format_summary
from finetune.errors import DataError
from tests.data.helpers import ids, prepare_file

FMT = FeedbackFormat()
USER = {"role": "user", "content": "what is the capital of france"}
ANSWER = {"role": "assistant", "content": "paris"}


def test_text_row_splits_at_the_prompt_and_ends_with_eos(tok) -> None:
    row = encode_row({"prompt": "what is 2+2?", "completion": " 4", "label": True}, FMT, tok)
    assert row.prompt_ids == ids(tok, "what is 2+2?")
    assert row.completion_ids == [*ids(tok, " 4"), tok.eos_token_id]
    assert row.label is True


@pytest.mark.parametrize("name", ["tok", "smol"])
@pytest.mark.parametrize("completion", [[ANSWER], "paris"], ids=["turns", "plain"])
def test_a_feedback_row_is_the_preference_pair_s_answer(name: str, completion, request) -> None:
    """Prompt and answer tokenize as the chosen side of a preference pair does (chat turns
    up to the end-of-turn token, also where pad == eos), so KTO and DPO on the same data
    see the same sequences."""
    tokenizer = request.getfixturevalue(name)
    row = encode_row({"prompt": [USER], "completion": completion, "label": 0}, FMT, tokenizer)
    pair = encode_row(
        {"prompt": [USER], "chosen": "paris", "rejected": "london"}, PreferenceFormat(), tokenizer
    )
    assert (row.prompt_ids, row.completion_ids, row.label) == (
        pair.prompt_ids,
        pair.chosen_ids,
        False,
    )
    assert tokenizer.decode(row.completion_ids) == "paris<|im_end|>"


def test_options_rename_the_fields(tok) -> None:
    fmt = FeedbackFormat(
        prompt_field="q",
        completion_field="a",
        label_field="good",
        role_names={"human": "user"},
        system_prompt="be brief",
    )
    row = {"q": [{"role": "human", "content": "hi"}], "a": "hello", "good": "False"}
    encoded = encode_row(row, fmt, tok)
    assert tok.decode(encoded.prompt_ids).startswith("<|im_start|>system\nbe brief")
    assert encoded.label is False  # CSV-style strings are read


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"completion": "a", "label": True}, "missing field 'prompt'"),
        ({"prompt": "x", "label": True}, "missing field 'completion'"),
        ({"prompt": "x", "completion": "a"}, "missing field 'label'"),
        ({"prompt": "x", "completion": "a", "label": "yes"}, "expected true"),
        ({"prompt": "x", "completion": "a", "label": 2}, "expected true"),
        ({"prompt": "x", "completion": "", "label": True}, "field 'completion' is empty"),
        ({"prompt": "x", "completion": [ANSWER], "label": True}, "give the prompt as turns"),
        ({"prompt": [USER, ANSWER], "completion": "a", "label": True}, "ends with an assistant"),
        ({"prompt": [USER], "completion": [USER], "label": True}, "start with an assistant"),
    ],
)
def test_bad_rows(tok, row, reason: str) -> None:
    with pytest.raises(BadRow, match=reason):
        encode_row(row, FMT, tok)


def _prepare(tmp_path: Path, tok, rows, **data):
    return prepare_file(tmp_path / "feedback.jsonl", rows, "feedback", tok, **data)


GOOD = {"prompt": "what is 2+2?", "completion": " 4", "label": True}
BAD = {"prompt": "what is 2+3?", "completion": " 6", "label": False}


def test_rows_are_cached_summarized_and_bad_ones_located(tmp_path: Path, tok) -> None:
    first = _prepare(tmp_path, tok, [GOOD, BAD, GOOD])
    second = _prepare(tmp_path, tok, [GOOD, BAD, GOOD])
    assert not first.sources[0].cached and second.sources[0].cached
    assert set(first.train.column_names) == {"prompt_ids", "completion_ids", "label", "length"}
    assert sorted(first.train["label"]) == [False, True, True]
    row = first.train[0]
    assert row["length"] == len(row["prompt_ids"]) + len(row["completion_ids"])
    assert "train: 3 answers (2 desirable)" in format_summary(first)
    broken = [GOOD, {"prompt": "x", "completion": "a", "label": "maybe"}]
    with pytest.raises(DataError, match=r"feedback\.jsonl:2: label_field 'label' is 'maybe'"):
        _prepare(tmp_path, tok, broken)


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_sides(tmp_path: Path, tok, side: str) -> None:
    row = {"prompt": "the big red dog sat under a tree", "completion": " it ran", "label": True}
    full = encode_row(row, FMT, tok)
    limit = len(full.prompt_ids) + 2
    kept = _prepare(tmp_path, tok, [row], max_length=limit, truncation=side).train[0]
    assert len(kept["prompt_ids"]) + len(kept["completion_ids"]) == limit
    if side == "right":  # the prompt whole, the answer cut at its end
        assert kept["prompt_ids"] == full.prompt_ids
        assert kept["completion_ids"] == full.completion_ids[:2]
    else:  # the answer whole, the prompt cut at its start
        assert kept["completion_ids"] == full.completion_ids
        assert kept["prompt_ids"] == full.prompt_ids[-(limit - len(full.completion_ids)) :]
