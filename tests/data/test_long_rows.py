"""A very long row is cut before it is tokenized, to the same tokens a whole tokenization
keeps after truncation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from finetune.config.data import CompletionFormat, TextFormat
from finetune.data.formats import encode_row
from finetune.data.pipeline import cut_long_text, text_budget, truncate
from tests.conftest import run_cli
from tests.data.helpers import WORDS

MAX_LENGTH = 48


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


ROWS = {
    "long answer": ({"prompt": "what is it?", "completion": _words(30_000, 1)}, "completion"),
    "long prompt": ({"prompt": _words(30_000, 2), "completion": "paris"}, "completion"),
    "one long word": ({"prompt": "spell it:", "completion": "ab" * 40_000}, "completion"),
    "long text": ({"text": _words(30_000, 3)}, "text"),
}
FORMATS = {"completion": CompletionFormat(type="completion"), "text": TextFormat(type="text")}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", list(ROWS))
def test_a_cut_row_keeps_the_tokens_of_the_whole_row(tok, name: str, side: str) -> None:
    row, fmt = ROWS[name]
    budget = text_budget(tok, MAX_LENGTH)
    cut = cut_long_text(row, budget, side)
    assert sum(map(len, cut.values())) < sum(map(len, row.values()))  # it was cut
    whole = truncate(encode_row(row, FORMATS[fmt], tok), MAX_LENGTH, side)
    short = truncate(encode_row(cut, FORMATS[fmt], tok), MAX_LENGTH, side)
    assert short.input_ids == whole.input_ids
    assert short.trainable == whole.trainable


def test_short_rows_are_left_alone(tok) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}], "n": 3}
    assert cut_long_text(row, text_budget(tok, MAX_LENGTH), "right") == row


@pytest.mark.slow
def test_a_50_mb_row_is_preprocessed(tmp_path: Path) -> None:
    """One 50 MB word (no spaces: a single BPE word) beside a normal row; the tokenizer is
    trained on this data too. It took 515 s before rows were cut."""
    data = tmp_path / "huge.jsonl"
    rows = [
        {"prompt": "What?", "completion": "a" * 50_000_000},
        {"prompt": "2?", "completion": "3"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli(
        "preprocess",
        "configs/examples/quickstart.yaml",
        *("--set", f"data.train=[{{path: {data}, format: {{type: completion}}}}]"),
        *("--set", "data.eval=[]", "--set", "train.exact_match_rows=0"),
        *("--set", f"data.cache_dir={tmp_path / 'cache'}"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 samples" in result.stdout
