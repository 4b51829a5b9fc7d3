"""Turn rows of each data format into token ids and labels (-100 where no loss)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase


def tokenize_text(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, text_field: str, max_length: int
) -> dict[str, list[int]]:
    """Raw language modelling: every token of the text, then EOS, carries loss."""
    ids = tokenizer(row[text_field], add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and tokenizer.bos_token_id != tokenizer.eos_token_id:
        ids = [tokenizer.bos_token_id, *ids]
    ids = [*ids, tokenizer.eos_token_id][:max_length]
    return {"input_ids": ids, "labels": list(ids)}
