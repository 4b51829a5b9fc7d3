"""Build the base model: a checkpoint from disk, or an architecture with random weights."""

from __future__ import annotations

import dataclasses
import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import finetune.models  # noqa: F401  (registers the project's architectures)
from finetune.config.schema import (
    ModelConfig,
    QLoraMethod,
    hf_config_class,
    unknown_config_keys,
)
from finetune.errors import ConfigError

# model.task -> the Auto class that builds the model with the head for it.
TASK_AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "sequence_classification": AutoModelForSequenceClassification,
}


def quantization_config(method: QLoraMethod) -> BitsAndBytesConfig:
    """The bitsandbytes settings that QLoRA loads (and merge re-creates) the base with."""
    if method.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = getattr(torch, method.compute_dtype)
    # ZeRO-3 shards parameters by flattening them per dtype: packed in the compute dtype
    # (rather than uint8) the 4-bit weights shard like every other tensor of the model.
    from transformers.integrations import is_deepspeed_zero3_enabled

    storage = compute_dtype if is_deepspeed_zero3_enabled() else torch.uint8
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quant_type,
        bnb_4bit_use_double_quant=method.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=storage,
    )


def load_base_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    quantize: QLoraMethod | None = None,
    labels: list[str] | None = None,
) -> PreTrainedModel:
    """The model to train, in fp32 (its linear layers quantized when `quantize` is given),
    with embeddings that cover the tokenizer.

    Raises:
        ConfigError: the checkpoint cannot be loaded, or `model.config` names fields its
            config class does not have.
    """
    kwargs = {}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    auto_class = TASK_AUTO_CLASSES[cfg.task]
    config = _with_labels(model_config(cfg, token_fields(tokenizer)), labels)
    if cfg.architecture is not None:
        model = auto_class.from_config(config, dtype=torch.float32, **kwargs)
    else:
        if quantize is not None:
            kwargs["quantization_config"] = quantization_config(quantize)
        model = auto_class.from_pretrained(
            checkpoint_path(cfg.name_or_path),
            config=config,
            dtype=torch.float32,
            trust_remote_code=cfg.trust_remote_code,
            **kwargs,
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def checkpoint_path(name_or_path: str) -> str:
    """`name_or_path` with `~` and environment variables expanded, so a config can name a
    checkpoint under the user's home or cache (a Hub id comes back unchanged)."""
    return os.path.expanduser(os.path.expandvars(name_or_path))


def _with_labels(config: PretrainedConfig, labels: list[str] | None) -> PretrainedConfig:
    """Size and name a classification head from the data's classes."""
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    return config


def model_config(cfg: ModelConfig, tokens: dict[str, int | None]) -> PretrainedConfig:
    """The Hugging Face config of the model `cfg` describes, with `model.config` applied: a
    new architecture's, sized and given its special tokens by `tokens` (`token_fields`, or
    what is known without a tokenizer), or the checkpoint's.

    Raises:
        ConfigError: the checkpoint's config cannot be loaded, or `model.config` is invalid
            or names fields the config class does not have.
    """
    if cfg.architecture is not None:
        return _new_config(cfg, tokens)
    return _checkpoint_config(cfg)


def token_fields(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """What a new model takes from its tokenizer: the vocabulary size and special tokens."""
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _new_config(cfg: ModelConfig, tokens: dict[str, int | None]) -> PretrainedConfig:
    fields = {**tokens, **cfg.config}
    config_class = hf_config_class(cfg.architecture)
    declared = {f.name for f in dataclasses.fields(config_class)}
    if "decoder_start_token_id" in declared:
        # Encoder-decoders start decoding from a token of their own; BART uses EOS.
        start = tokens.get("bos_token_id") or tokens.get("eos_token_id")
        fields.setdefault("decoder_start_token_id", start)
    try:
        return config_class(**fields)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.config: {err}") from None


def _checkpoint_config(cfg: ModelConfig) -> PretrainedConfig:
    try:
        config = AutoConfig.from_pretrained(
            checkpoint_path(cfg.name_or_path), trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name_or_path: cannot load a model config from {cfg.name_or_path!r}: {err}"
        ) from None
    errors = unknown_config_keys(type(config), list(cfg.config))
    if errors:
        raise ConfigError("model.config: " + "; ".join(errors))
    for key, value in cfg.config.items():
        setattr(config, key, value)
    return config
