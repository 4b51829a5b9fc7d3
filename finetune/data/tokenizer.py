"""Load a tokenizer, or train a byte-level BPE one on the run's text; chat templates and
the fingerprint that keys the data cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from finetune.config.data import DataConfig, TokenizerConfig, TokenizerTrainConfig
from finetune.data.formats import iter_texts
from finetune.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TRAIN_CHARS_PER_TOKEN = 32
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
MASK_TOKEN = "<|mask|>"  # added for masked-LM training when a tokenizer has no mask token

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
    # `~` and $VARS expand as in model.name_or_path; a Hub id comes back unchanged.
    path = os.path.expanduser(os.path.expandvars(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
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


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give a tokenizer without a chat template the default ChatML one.

    The ChatML markers are added as special tokens when the vocabulary lacks them, so each
    is one token (the model's embeddings grow to match when it is built). The template is
    stored on the tokenizer, so the saved tokenizer renders chats as training did.

    Returns:
        Whether the default template was applied.
    """
    if tokenizer.chat_template is not None:
        return False
    vocab = tokenizer.get_vocab()
    missing = [t for t in CHAT_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    logger.warning(
        "the tokenizer has no chat template: chat data is rendered with the default ChatML "
        "template%s",
        f" (added special tokens {', '.join(missing)})" if missing else "",
    )
    return True


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides how text becomes ids: the backend's model,
    normalizer, pre-tokenizer and added tokens (or the vocabulary of a slow tokenizer),
    the special tokens and the chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Padding and truncation settings change while batches are encoded, not the ids.
        state.pop("padding", None)
        state.pop("truncation", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.chat_template]
    digest.update(json.dumps(special, default=str).encode())
    return digest.hexdigest()


def build_tokenizer(
    cfg: TokenizerConfig,
    data: DataConfig,
    model_name_or_path: str | None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """The run's tokenizer in one process: loaded, or trained on the training text.

    Raises:
        ConfigError: there is nothing to load it from, or it cannot be loaded.
    """
    if cfg.train is not None:
        # No training sequence holds more than max_length tokens of a row, and a token
        # rarely spans 32 characters: text past that is never seen whole by the model.
        cut = TRAIN_CHARS_PER_TOKEN * data.max_length
        texts = iter_texts(data.train, cfg.train.max_texts, cut, data.truncation)
        return train_tokenizer(texts, cfg.train)
    source = cfg.name_or_path or model_name_or_path
    if source is None:
        raise ConfigError("tokenizer: set tokenizer.name_or_path or tokenizer.train")
    return load_tokenizer(source, trust_remote_code=trust_remote_code)


def shared_tokenizer(
    cfg: TokenizerConfig,
    data: DataConfig,
    model_name_or_path: str | None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """`build_tokenizer` for every rank of a run: a tokenizer trained on the data is trained
    by rank 0 alone and sent to the others, so all ranks hold the same one."""
    import torch.distributed as dist

    def build() -> PreTrainedTokenizerBase:
        return build_tokenizer(cfg, data, model_name_or_path, trust_remote_code)

    if cfg.train is None or not (dist.is_available() and dist.is_initialized()):
        return build()
    payload: list[dict | None] = [None]
    if dist.get_rank() == 0:
        trained = build()
        payload[0] = {
            "backend": trained.backend_tokenizer.to_str(),
            "special": trained.special_tokens_map,
            "chat_template": trained.chat_template,
        }
    dist.broadcast_object_list(payload, src=0)
    state = payload[0]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(state["backend"]), **state["special"]
    )
    tokenizer.chat_template = state["chat_template"]
    return tokenizer


@dataclass
class TokenizerReport:
    """How a newly trained tokenizer compresses text it was not trained on."""

    vocab_size: int
    train_texts: int
    heldout_texts: int
    heldout_bytes: int
    heldout_tokens: int

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of held-out text per token (higher compresses better)."""
        return self.heldout_bytes / max(self.heldout_tokens, 1)


def train_tokenizer_with_report(
    tokenizer_cfg: TokenizerConfig, data: DataConfig, heldout_every: int = 20
) -> tuple[PreTrainedTokenizerFast, TokenizerReport]:
    """Train the run's tokenizer (`tokenizer.train`) and measure its compression on
    held-out text.

    The held-out text is the evaluation sources when the config has some, else every
    `heldout_every`-th training text, which is then left out of tokenizer training.

    Raises:
        ConfigError: the config has no `tokenizer.train` section.
        DataError: the training data yields fewer than two usable texts.
    """
    cfg = tokenizer_cfg.train
    if cfg is None:
        raise ConfigError(
            "tokenizer.train: not set, so there is no tokenizer to train; add a "
            "tokenizer.train section, e.g. --set tokenizer.train.vocab_size=4096"
        )
    cut = TRAIN_CHARS_PER_TOKEN * data.max_length
    texts = list(iter_texts(data.train, cfg.max_texts, cut, data.truncation))
    if data.eval:
        train_texts, heldout = texts, list(iter_texts(data.eval))
    else:
        heldout = texts[::heldout_every]
        train_texts = [t for i, t in enumerate(texts) if i % heldout_every]
    if not train_texts or not heldout:
        raise DataError(
            f"tokenizer.train: {len(texts)} usable training texts; need at least 2 to train "
            "and measure a tokenizer"
        )
    tokenizer = train_tokenizer(iter(train_texts), cfg)
    ids = tokenizer(heldout, add_special_tokens=False)["input_ids"]
    report = TokenizerReport(
        vocab_size=len(tokenizer),
        train_texts=len(train_texts),
        heldout_texts=len(heldout),
        heldout_bytes=sum(len(t.encode("utf-8")) for t in heldout),
        heldout_tokens=sum(len(i) for i in ids),
    )
    return tokenizer, report
