"""Exact token ids and loss masks of each format, against an independent computation.

The expected values are built by tokenizing the known pieces of each rendered sample on
their own (prompt, answer, template text between turns) and concatenating them; the code
under test instead renders the whole sample, tokenizes it once and maps character spans to
tokens. The pieces are chosen to meet at boundaries the byte-level pre-tokenizer always
splits (a newline, a leading space, a special token), so both must agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.config.data import (
    AlpacaFormat,
    ChatFormat,
    CompletionFormat,
    DataConfig,
    DatasetConfig,
    TextFormat,
)
from finetune.data.collator import PaddingCollator
from finetune.data.formats import BadRow, Encoded, encode_row, prompt_and_answer
from finetune.data.pipeline import prepare_data
from finetune.data.tokenizer import DEFAULT_CHAT_TEMPLATE
from tests.data.helpers import chatml_tokenizer, ids, write_jsonl

IGNORE = -100


def labels_of(encoded: Encoded) -> list[int]:
    return [i if t else IGNORE for i, t in zip(encoded.input_ids, encoded.trainable, strict=True)]


def expected(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels from tokenizing each piece alone; True pieces carry loss."""
    all_ids, labels = [], []
    for text, trains in pieces:
        piece = ids(tokenizer, text)
        all_ids += piece
        labels += piece if trains else [IGNORE] * len(piece)
    return all_ids, labels


# --------------------------------------------------------------------------------------
# text, completion, alpaca
# --------------------------------------------------------------------------------------


def test_text_trains_every_token_and_eos(tok) -> None:
    enc = encode_row({"text": "the cat sat on a mat"}, TextFormat(), tok)
    assert enc.input_ids == [*ids(tok, "the cat sat on a mat"), tok.eos_token_id]
    assert labels_of(enc) == enc.input_ids


def test_completion_masks_the_prompt(tok) -> None:
    row = {"prompt": "what is 2 + 3? answer:", "completion": " 5"}
    enc = encode_row(row, CompletionFormat(type="completion"), tok)
    prompt, answer, eos = ids(tok, row["prompt"]), ids(tok, " 5"), tok.eos_token_id
    assert enc.input_ids == prompt + answer + [eos]
    assert enc.input_ids == [*ids(tok, row["prompt"] + row["completion"]), eos]
    assert labels_of(enc) == [IGNORE] * len(prompt) + answer + [eos]


def test_completion_separator_and_train_on_prompt(tok) -> None:
    row = {"q": "hello", "a": "you are helpful"}
    fmt = CompletionFormat(
        type="completion", prompt_field="q", completion_field="a", separator="\n"
    )
    enc = encode_row(row, fmt, tok)
    want_ids, want_labels = expected(tok, [("hello\n", False), ("you are helpful", True)])
    assert enc.input_ids == [*want_ids, tok.eos_token_id]
    assert labels_of(enc) == [*want_labels, tok.eos_token_id]
    everything = encode_row(row, fmt.model_copy(update={"train_on_prompt": True}), tok)
    assert labels_of(everything) == everything.input_ids


def test_alpaca_with_and_without_input(tok) -> None:
    fmt = AlpacaFormat(type="alpaca")
    with_input = (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\ntell me the capital\n\n### Input:\nfrance\n\n### Response:\n"
    )
    no_input = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\ntell me the capital\n\n### Response:\n"
    )
    row = {"instruction": "tell me the capital", "input": "france", "output": "paris"}
    for row_input, prompt in (("france", with_input), ("", no_input), (None, no_input)):
        enc = encode_row({**row, "input": row_input}, fmt, tok)
        want_ids, want_labels = expected(tok, [(prompt, False), ("paris", True)])
        assert enc.input_ids == [*want_ids, tok.eos_token_id]
        assert labels_of(enc) == [*want_labels, tok.eos_token_id]


# --------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "you are helpful"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello you"},
        {"role": "user", "content": "tell me a joke"},
        {"role": "assistant", "content": "why? because it was there"},
    ]
}

CHATML_PIECES = [
    (
        "<|im_start|>system\nyou are helpful<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\n",
        False,
    ),
    ("hello you<|im_end|>", True),
    ("\n<|im_start|>user\ntell me a joke<|im_end|>\n<|im_start|>assistant\n", False),
    ("why? because it was there<|im_end|>", True),
    ("\n", False),
]


def test_chat_multi_turn_with_system_generation_markers(tok) -> None:
    # The default template marks assistant turns with {% generation %}.
    assert "{% generation %}" in tok.chat_template
    enc = encode_row(CONVERSATION, ChatFormat(type="chat"), tok)
    want_ids, want_labels = expected(tok, CHATML_PIECES)
    assert enc.input_ids == want_ids
    assert labels_of(enc) == want_labels


def test_chat_template_without_markers_gives_the_same_mask(tok) -> None:
    plain = chatml_tokenizer()
    plain.chat_template = DEFAULT_CHAT_TEMPLATE.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    marked = encode_row(CONVERSATION, ChatFormat(type="chat"), tok)
    by_prefix = encode_row(CONVERSATION, ChatFormat(type="chat"), plain)
    assert by_prefix == marked


def test_chat_pad_equals_eos_keeps_end_of_turn_labels(smol) -> None:
    """SmolLM2's convention: <|im_end|> is eos and pad, and must stay in the labels."""
    end = smol.convert_tokens_to_ids("<|im_end|>")
    assert smol.pad_token_id == smol.eos_token_id == end
    enc = encode_row(CONVERSATION, ChatFormat(type="chat"), smol)
    want_ids, want_labels = expected(smol, CHATML_PIECES)
    assert enc.input_ids == want_ids
    assert labels_of(enc) == want_labels
    assert sum(label == end for label in labels_of(enc)) == 2  # one per assistant turn

    short = {"input_ids": [5, 6, end], "labels": [IGNORE, 6, end]}
    batch = PaddingCollator(smol.pad_token_id)(
        [{"input_ids": enc.input_ids, "labels": labels_of(enc)}, short]
    )
    assert batch["labels"][1].tolist()[:3] == [IGNORE, 6, end]
    assert (batch["labels"][0] == end).sum() == 2
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * (len(enc.input_ids) - 3)


def test_chat_default_system_turn_of_the_template_is_not_trained(smol) -> None:
    row = {"messages": CONVERSATION["messages"][1:3]}
    enc = encode_row(row, ChatFormat(type="chat"), smol)
    system = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    want_ids, want_labels = expected(
        smol, [(system, False), ("hello you<|im_end|>", True), ("\n", False)]
    )
    assert (enc.input_ids, labels_of(enc)) == (want_ids, want_labels)


def test_chat_options_system_prompt_role_names_and_train_on_prompt(tok) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "hello"},
            {"from": "gpt", "value": "hello you"},
        ]
    }
    fmt = ChatFormat(
        type="chat",
        messages_field="conversations",
        role_field="from",
        content_field="value",
        role_names={"human": "user", "gpt": "assistant"},
        system_prompt="you are helpful",
    )
    enc = encode_row(row, fmt, tok)
    want_ids, want_labels = expected(tok, [*CHATML_PIECES[:2], ("\n", False)])
    assert (enc.input_ids, labels_of(enc)) == (want_ids, want_labels)
    everything = encode_row(row, fmt.model_copy(update={"train_on_prompt": True}), tok)
    assert labels_of(everything) == want_ids


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"text": 3}, "field 'messages'"),
        ({"messages": "hi"}, "must be a list of turns"),
        ({"messages": []}, "is empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user"}]}, "turn 1: missing field 'content'"),
        ({"messages": [{"role": "user", "content": 7}]}, "must be a string, got int"),
        ({"messages": [{"role": "user", "content": " "}]}, "is empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
            "opens with an assistant turn",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
            "turn 2 is a system turn",
        ),
    ],
)
def test_chat_bad_rows(tok, row, reason) -> None:
    with pytest.raises(BadRow, match=reason):
        encode_row(row, ChatFormat(type="chat"), tok)


def test_bad_rows_of_other_formats(tok) -> None:
    completion = CompletionFormat(type="completion")
    with pytest.raises(BadRow, match=r"missing field 'completion' \(fields: prompt\)"):
        encode_row({"prompt": "a"}, completion, tok)
    with pytest.raises(BadRow, match="field 'prompt' must be a string, got list"):
        encode_row({"prompt": ["a"], "completion": "b"}, completion, tok)
    with pytest.raises(BadRow, match="field 'text' is empty"):
        encode_row({"text": "  "}, TextFormat(), tok)
    with pytest.raises(BadRow, match="field 'output' is empty"):
        encode_row({"instruction": "a", "output": ""}, AlpacaFormat(type="alpaca"), tok)
    with pytest.raises(BadRow, match="expected an object"):
        encode_row(["a", "b"], TextFormat(), tok)


# --------------------------------------------------------------------------------------
# truncation
# --------------------------------------------------------------------------------------


def _prepare(tmp_path: Path, tok, rows, fmt, **data) -> object:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = DataConfig(
        train=[DatasetConfig(path=str(path), format=fmt)],
        cache_dir=str(tmp_path / "cache"),
        **data,
    )
    return prepare_data(cfg, tok, seed=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_sides(tmp_path: Path, tok, side: str) -> None:
    row = {"prompt": "the big red dog sat under a tree", "completion": " it ran to the house"}
    prompt, answer = ids(tok, row["prompt"]), ids(tok, row["completion"])
    full_ids = prompt + answer + [tok.eos_token_id]
    full_labels = [IGNORE] * len(prompt) + answer + [tok.eos_token_id]
    keep = len(prompt) + 2  # two answer tokens fit on the right, the prompt's head goes left
    data = _prepare(tmp_path, tok, [row], {"type": "completion"}, max_length=keep, truncation=side)
    sample = data.train[0]
    cut = slice(0, keep) if side == "right" else slice(len(full_ids) - keep, None)
    assert sample["input_ids"] == full_ids[cut]
    assert sample["labels"] == full_labels[cut]
    assert data.sources[0].stats.truncated == 1


def test_chat_truncation_left_keeps_the_last_turn(tmp_path: Path, tok) -> None:
    full = encode_row(CONVERSATION, ChatFormat(type="chat"), tok)
    data = _prepare(tmp_path, tok, [CONVERSATION], "chat", max_length=12, truncation="left")
    assert data.train[0]["input_ids"] == full.input_ids[-12:]
    assert data.train[0]["labels"] == labels_of(full)[-12:]


def test_row_without_trainable_token_after_truncation_is_dropped(tmp_path: Path, tok) -> None:
    long_prompt = {"prompt": "the cat sat on a mat " * 6, "completion": " red"}
    fine = {"prompt": "the cat", "completion": " sat"}
    data = _prepare(tmp_path, tok, [long_prompt, fine], {"type": "completion"}, max_length=16)
    stats = data.sources[0].stats
    assert (stats.rows, stats.kept, stats.no_trainable, stats.truncated) == (2, 1, 1, 0)
    assert len(data.train) == 1
    # Cutting from the left keeps the answer instead.
    left = _prepare(
        tmp_path / "left",
        tok,
        [long_prompt, fine],
        {"type": "completion"},
        max_length=16,
        truncation="left",
    )
    assert left.sources[0].stats.kept == 2


def test_labels_are_plain_ints_the_collator_accepts(tmp_path: Path, tok) -> None:
    rows = [{"text": "the cat"}, {"text": "a big red tree under the house"}]
    data = _prepare(tmp_path, tok, rows, "text")
    batch = PaddingCollator(tok.pad_token_id)([data.train[0], data.train[1]])
    assert batch["input_ids"].dtype == torch.long
    assert batch["labels"].shape == batch["input_ids"].shape


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        (
            CompletionFormat(type="completion"),
            {"prompt": "what is 2 + 3? answer:", "completion": " 5"},
        ),
        (
            AlpacaFormat(type="alpaca"),
            {"instruction": "tell me the capital", "input": "france", "output": "paris"},
        ),
        (ChatFormat(type="chat"), CONVERSATION),
    ],
    ids=["completion", "alpaca", "chat"],
)
def test_generation_prompt_is_what_training_puts_before_the_answer(tok, fmt, row) -> None:
    """Exact match and `generate` prompt the model with the tokens that preceded the
    (last) answer in training, and check that answer."""
    prompt, answer = prompt_and_answer(row, fmt, tok)
    enc = encode_row(row, fmt, tok)
    flags = enc.trainable
    last = max(i for i, t in enumerate(flags) if t and (i == 0 or not flags[i - 1]))
    assert enc.input_ids[:last] == ids(tok, prompt)
    assert enc.input_ids[last : last + len(ids(tok, answer))] == ids(tok, answer)
