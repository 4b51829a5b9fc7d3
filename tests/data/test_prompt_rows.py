"""The prompt format (GRPO's and RLOO's data): prompts alone, tokenized as the model sees
them at generation time, with every other field kept for the reward functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.config.data import PromptFormat
from finetune.data.formats import BadRow, encode_row
from finetune.data.summary import format_summary
from finetune.errors import DataError
from tests.data.helpers import ids, prepare_file

FMT = PromptFormat()
USER = {"role": "user", "content": "what is the capital of france"}
ANSWER = {"role": "assistant", "content": "paris"}


def test_a_text_prompt_is_its_tokens_without_eos(tok) -> None:
    row = encode_row({"prompt": "what is 2+2?", "answer": 4, "task": "sum"}, FMT, tok)
    assert row.prompt_ids == ids(tok, "what is 2+2?")
    assert tok.eos_token_id not in row.prompt_ids
    assert json.loads(row.prompt) == "what is 2+2?"
    assert json.loads(row.extras) == {"answer": 4, "task": "sum"}


@pytest.mark.parametrize("name", ["tok", "smol"])
def test_a_chat_prompt_ends_with_the_generation_prompt(name: str, request) -> None:
    """The ids a completion is sampled after are those a preference pair's answers follow
    (the chat template with its generation prompt), also where pad == eos."""
    tokenizer = request.getfixturevalue(name)
    row = encode_row({"prompt": [USER], "answer": "paris"}, FMT, tokenizer)
    expected = tokenizer.apply_chat_template([USER], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(row.prompt_ids) == expected
    assert expected.endswith("<|im_start|>assistant\n")
    assert json.loads(row.prompt) == [USER]


def test_options_rename_the_fields(tok) -> None:
    fmt = PromptFormat(prompt_field="q", role_names={"human": "user"}, system_prompt="be brief")
    row = encode_row({"q": [{"role": "human", "content": "hi"}], "ref": "hello"}, fmt, tok)
    assert tok.decode(row.prompt_ids).startswith("<|im_start|>system\nbe brief")
    turns = json.loads(row.prompt)
    assert [t["role"] for t in turns] == ["system", "user"]  # as the rewards see it
    assert json.loads(row.extras) == {"ref": "hello"}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"answer": "4"}, "missing field 'prompt'"),
        ({"prompt": "  "}, "field 'prompt' is empty"),
        ({"prompt": 4}, "must be a string"),
        ({"prompt": [USER, ANSWER]}, "ends with an assistant turn"),
        ({"prompt": [{"role": "system", "content": "x"}]}, "no user turn"),
        ({"prompt": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"prompt": [USER, {"role": "system", "content": "x"}, USER]}, "turn 2 is a system turn"),
    ],
)
def test_bad_rows(tok, row, reason: str) -> None:
    with pytest.raises(BadRow, match=reason):
        encode_row(row, FMT, tok)


def _prepare(tmp_path: Path, tok, rows, **data):
    return prepare_file(tmp_path / "prompts.jsonl", rows, "prompt", tok, **data)


ROWS = [{"prompt": "what is 2+2?", "answer": "4"}, {"prompt": "what is 3+3?", "answer": "6"}]


def test_rows_are_cached_summarized_and_bad_ones_located(tmp_path: Path, tok) -> None:
    first = _prepare(tmp_path, tok, ROWS)
    second = _prepare(tmp_path, tok, ROWS)
    assert not first.sources[0].cached and second.sources[0].cached
    assert set(first.train.column_names) == {"prompt_ids", "prompt", "extras", "length"}
    assert sorted(json.loads(e)["answer"] for e in second.train["extras"]) == ["4", "6"]
    assert all(r["length"] == len(r["prompt_ids"]) for r in second.train)
    assert "train: 2 prompts" in format_summary(first)
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: missing field 'prompt'"):
        _prepare(tmp_path, tok, [ROWS[0], {"question": "x"}])


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_sides(tmp_path: Path, tok, side: str) -> None:
    row = {"prompt": "the big red dog sat under a tree and then it ran home", "answer": "x"}
    full = encode_row(row, FMT, tok).prompt_ids
    kept = _prepare(tmp_path, tok, [row], max_length=8, truncation=side)
    assert kept.train[0]["prompt_ids"] == (full[:8] if side == "right" else full[-8:])
    assert kept.sources[0].stats.truncated == 1
