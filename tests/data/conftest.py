"""The tokenizers the data tests share (one per test module, as a test may add tokens)."""

from __future__ import annotations

import pytest

from tests.data.helpers import chatml_tokenizer, smol_like_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The project's trained kind: ChatML template with {% generation %} markers."""
    return chatml_tokenizer()


@pytest.fixture(scope="module")
def smol():
    """SmolLM2's conventions: pad == eos == <|im_end|>, no generation markers."""
    return smol_like_tokenizer()
