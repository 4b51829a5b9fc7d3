"""Tiny tokenizers and data files built inside the tests (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from finetune.config.data import DataConfig, DatasetConfig, TokenizerTrainConfig
from finetune.data.pipeline import prepare_data
from finetune.data.tokenizer import train_tokenizer

WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "a",
    "mat",
    "ran",
    "to",
    "house",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "tree",
    "under",
    "over",
    "what",
    "is",
    "capital",
    "of",
    "france",
    "paris",
    "answer",
    "question",
    "hello",
    "you",
    "are",
    "helpful",
    "assistant",
    "system",
    "user",
    "tell",
    "me",
    "joke",
    "why",
    "because",
    "it",
    "was",
    "there",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
]

# SmolLM2-Instruct's template: ChatML without {% generation %} markers, with a default
# system turn; its tokenizer uses <|im_end|> as both EOS and pad.
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus(rows: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(rows)]


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """The project's trained kind: eos <|endoftext|>, pad <|pad|>, ChatML template with
    {% generation %} markers."""
    return train_tokenizer(iter(corpus()), TokenizerTrainConfig(vocab_size=400))


def smol_like_tokenizer() -> PreTrainedTokenizerFast:
    """Same vocabulary, SmolLM2's conventions: pad == eos == <|im_end|>, no markers."""
    base = chatml_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(base.backend_tokenizer.to_str()),
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = SMOL_TEMPLATE
    return tokenizer


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def prepare_file(
    path: Path, rows: list[Any], data_format: str, tokenizer: PreTrainedTokenizerFast, **data: Any
):
    """`rows` written to `path` and prepared as the one training source, in `data_format`,
    with a cache beside the file (`data`: more options of the data section)."""
    cfg = DataConfig(
        train=[DatasetConfig(path=str(write_jsonl(path, rows)), format=data_format)],
        cache_dir=str(path.parent / "cache"),
        **data,
    )
    return prepare_data(cfg, tokenizer, seed=0)


def ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of `text` alone, no special tokens added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
