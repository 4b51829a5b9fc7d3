"""Load a tokenizer, or train a byte-level BPE one on the run's text."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from finetune.config.data import TokenizerTrainConfig
from finetune.errors import ConfigError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]

# ChatML, the default for tokenizers that bring no template of their own. The
# `{% generation %}` markers let transformers return the assistant-token mask.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it can pad.

    Raises:
        ConfigError: nothing loadable at `name_or_path`.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"tokenizer.name_or_path: cannot load a tokenizer from {name_or_path!r}: {err}"
        ) from None
    if tokenizer.pad_token is None:
        # Reusing EOS for padding is safe here: labels are masked from sample lengths.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_tokenizer(texts: Iterable[str], cfg: TokenizerTrainConfig) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with EOS, pad and ChatML tokens and a chat template."""
    backend = Tokenizer(models.BPE())
    # Digits split one by one (as Llama 3 and SmolLM2 do): numbers then share tokens and
    # a small model can learn arithmetic rules instead of memorising digit groups.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=CHAT_TOKENS,
    )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer
