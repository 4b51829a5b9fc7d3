"""Convert checkpoints between transformers' architectures and the project's own.

- Llama, Mistral, Qwen2 -> decoder (`decoder_from_hf`)
- BERT -> encoder (`encoder_from_bert`)
- BART, Marian -> seq2seq (`seq2seq_from_bart`, `seq2seq_from_marian`)
- decoder -> Llama, when the decoder's config is Llama-compatible (`decoder_to_llama`)

Each function takes a model object or a local checkpoint directory and returns the converted
model with the same weights (and generation config); `convert_checkpoint` does the same from
directory to directory, detecting the source from its config.json, for `finetune convert`.
A conversion builds the target config from the source config, renames the state dict, and loads
it strictly: a weight left over or missing is an error, never a silent random init.

This module is a library helper: the modeling files never import it, and it is not copied next
to saved checkpoints.
"""

import copy
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedConfig, PreTrainedModel

from .configuration_decoder import FinetuneDecoderConfig
from .configuration_encoder import FinetuneEncoderConfig
from .configuration_seq2seq import FinetuneSeq2SeqConfig
from .modeling_decoder import (
    FinetuneDecoderForCausalLM,
    FinetuneDecoderForSequenceClassification,
    FinetuneDecoderModel,
)
from .modeling_encoder import (
    FinetuneEncoderForMaskedLM,
    FinetuneEncoderForSequenceClassification,
    FinetuneEncoderModel,
)
from .modeling_seq2seq import FinetuneSeq2SeqForConditionalGeneration, FinetuneSeq2SeqModel

ModelSource = PreTrainedModel | str | PathLike

# Activation names of transformers configs -> our `ffn` kinds (non-gated sources)
_PLAIN_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}

# Tokenizer files copied along by `convert_checkpoint`
_TOKENIZER_FILE_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.spm",
    "spiece.model",
    "sentencepiece*.model",
    "chat_template*",
)


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the fields and values in the way."""


# --------------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2 -> decoder
# --------------------------------------------------------------------------------------------

_LLAMA_RENAMES = [
    (r"\.input_layernorm\.", ".self_attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
]


def decoder_config_from_hf(config: PreTrainedConfig) -> FinetuneDecoderConfig:
    """Build the decoder config equivalent to a Llama, Mistral or Qwen2 config.

    Args:
        config: A `LlamaConfig`, `MistralConfig` or `Qwen2Config`.

    Returns:
        A `FinetuneDecoderConfig` computing the same function.

    Raises:
        ConversionError: if the source uses something the decoder does not have (another
            activation, per-layer sliding windows...).
    """
    _expect_model_type(config, ("llama", "mistral", "qwen2"))
    _expect(config, "hidden_act", ("silu",))
    attention_bias = getattr(config, "attention_bias", False)
    qkv_bias = config.model_type == "qwen2" or attention_bias
    return FinetuneDecoderConfig(
        **_common_fields(config),
        num_key_value_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None)
        or config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        ffn="swiglu",
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=config.rms_norm_eps,
        positions="rope",
        rope_parameters=copy.deepcopy(config.rope_parameters),
        max_position_embeddings=config.max_position_embeddings,
        attention_dropout=float(config.attention_dropout or 0.0),
        qkv_bias=qkv_bias,
        attention_out_bias=attention_bias,
        mlp_bias=getattr(config, "mlp_bias", False),
        sliding_window=_uniform_sliding_window(config),
        id2label=config.id2label,  # a classification (or reward) head's outputs
        label2id=config.label2id,
        problem_type=config.problem_type,
    )


def decoder_from_hf(
    model: ModelSource,
) -> FinetuneDecoderForCausalLM | FinetuneDecoderForSequenceClassification | FinetuneDecoderModel:
    """Convert a Llama, Mistral or Qwen2 model into the decoder family.

    Args:
        model: A `LlamaForCausalLM`, `LlamaForSequenceClassification` or `LlamaModel` (or the
            Mistral/Qwen2 equivalents), or a local checkpoint directory holding one.

    Returns:
        `FinetuneDecoderForCausalLM` for a causal-LM source,
        `FinetuneDecoderForSequenceClassification` for a classifier (or reward model),
        `FinetuneDecoderModel` for a base model, with the same weights.
    """
    source = _load_source(model)
    target_class = FinetuneDecoderForCausalLM
    if hasattr(source, "score"):
        target_class = FinetuneDecoderForSequenceClassification
    elif not hasattr(source, "lm_head"):
        target_class = FinetuneDecoderModel
    return _convert(source, decoder_config_from_hf(source.config), target_class, _LLAMA_RENAMES)


def _uniform_sliding_window(config: PreTrainedConfig) -> int | None:
    """The sliding window applied to every layer, None for full attention everywhere."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if config.model_type == "qwen2":
        window = window if getattr(config, "use_sliding_window", False) else None
    if layer_types and window is not None and len(set(layer_types)) > 1:
        raise ConversionError(
            f"layer_types mixes {sorted(set(layer_types))}: the decoder applies one "
            "sliding_window to every layer; set use_sliding_window=False or "
            "max_window_layers=0 in the source config"
        )
    if layer_types and set(layer_types) == {"full_attention"}:
        return None
    return window


# --------------------------------------------------------------------------------------------
# decoder -> Llama
# --------------------------------------------------------------------------------------------


def llama_config_from_decoder(config: FinetuneDecoderConfig) -> LlamaConfig:
    """Build the `LlamaConfig` computing the same function as a decoder config.

    Args:
        config: A Llama-compatible `FinetuneDecoderConfig`.

    Returns:
        The equivalent `LlamaConfig`.

    Raises:
        ConversionError: naming every field that Llama cannot express, with its value and the
            value Llama needs.
    """
    required = {
        "ffn": "swiglu",
        "norm": "rmsnorm",
        "norm_placement": "pre",
        "positions": "rope",
        "embedding_norm": False,
        "scale_embeddings": False,
        "sliding_window": None,
    }
    problems = [
        f"{name}={getattr(config, name)!r} (Llama needs {value!r})"
        for name, value in required.items()
        if getattr(config, name) != value
    ]
    if config.qkv_bias != config.attention_out_bias:
        problems.append(
            f"qkv_bias={config.qkv_bias} with attention_out_bias={config.attention_out_bias} "
            "(Llama's attention_bias covers q/k/v/o_proj together: they must be equal)"
        )
    if problems:
        raise ConversionError(
            "This decoder is not Llama-compatible: " + "; ".join(problems) + ". Keep it as a "
            "'decoder' checkpoint (it loads with trust_remote_code=True)."
        )
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.norm_eps,
        use_cache=config.use_cache,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters=copy.deepcopy(config.rope_parameters),
        attention_bias=config.qkv_bias,
        attention_dropout=config.attention_dropout,
        mlp_bias=config.mlp_bias,
        dtype=config.dtype,
    )


def decoder_to_llama(model: FinetuneDecoderForCausalLM | str | PathLike) -> LlamaForCausalLM:
    """Convert a Llama-compatible decoder into `LlamaForCausalLM` (no remote code needed).

    Args:
        model: A `FinetuneDecoderForCausalLM`, or a local checkpoint directory holding one.

    Returns:
        A `LlamaForCausalLM` with the same weights and generation config.

    Raises:
        ConversionError: if the decoder's config is not Llama-compatible (see
            `llama_config_from_decoder`).
    """
    if not isinstance(model, PreTrainedModel):
        model = FinetuneDecoderForCausalLM.from_pretrained(model)
    renames = [
        (r"\.self_attn_norm\.", ".input_layernorm."),
        (r"\.ffn_norm\.", ".post_attention_layernorm."),
    ]
    return _convert(model, llama_config_from_decoder(model.config), LlamaForCausalLM, renames)


# --------------------------------------------------------------------------------------------
# BERT -> encoder
# --------------------------------------------------------------------------------------------

_BERT_RENAMES = [
    (r"^bert\.", "model."),
    (r"embeddings\.word_embeddings\.", "embed_tokens."),
    (r"embeddings\.position_embeddings\.", "embed_positions."),
    (r"embeddings\.token_type_embeddings\.", "token_type_embeddings."),
    (r"embeddings\.LayerNorm\.", "embedding_norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.o_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.self_attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.up_proj."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.down_proj."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
    (r"^cls\.predictions\.transform\.dense\.", "head_transform.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "head_transform.norm."),
    (r"^cls\.predictions\.decoder\.", "lm_head."),
    # The head's bias also lives in `cls.predictions.bias`, tied to `decoder.bias`: keep one
    (r"^cls\.predictions\.bias$", None),
]


def encoder_config_from_bert(
    config: PreTrainedConfig, add_pooler: bool = True, mlm_head: bool = True
) -> FinetuneEncoderConfig:
    """Build the encoder config equivalent to a BERT config.

    Args:
        config: A `BertConfig`.
        add_pooler: Whether the source model has a pooler (BertForMaskedLM has none).
        mlm_head: Whether to describe BERT's masked-LM head (transform and bias).

    Returns:
        A `FinetuneEncoderConfig` computing the same function.
    """
    _expect_model_type(config, ("bert",))
    _expect(config, "is_decoder", (False,))
    return FinetuneEncoderConfig(
        **_common_fields(config),
        intermediate_size=config.intermediate_size,
        ffn=_plain_ffn(config, "hidden_act"),
        norm="layernorm",
        norm_placement="post",
        norm_eps=config.layer_norm_eps,
        positions="learned",
        max_position_embeddings=config.max_position_embeddings,
        hidden_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        qkv_bias=True,
        attention_out_bias=True,
        mlp_bias=True,
        embedding_norm=True,
        type_vocab_size=config.type_vocab_size,
        add_pooler=add_pooler,
        mlm_head_transform=mlm_head,
        mlm_head_bias=mlm_head,
        classifier_dropout=config.classifier_dropout,
        num_labels=config.num_labels,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
    )


def encoder_from_bert(
    model: ModelSource,
) -> FinetuneEncoderModel | FinetuneEncoderForMaskedLM | FinetuneEncoderForSequenceClassification:
    """Convert a BERT model into the encoder family.

    Args:
        model: A `BertModel`, `BertForMaskedLM` or `BertForSequenceClassification`, or a local
            checkpoint directory holding one.

    Returns:
        The matching `FinetuneEncoderModel`, `FinetuneEncoderForMaskedLM` or
        `FinetuneEncoderForSequenceClassification`, with the same weights.
    """
    source = _load_source(model)
    name = type(source).__name__
    heads = {
        "BertModel": FinetuneEncoderModel,
        "BertForMaskedLM": FinetuneEncoderForMaskedLM,
        "BertForSequenceClassification": FinetuneEncoderForSequenceClassification,
    }
    if name not in heads:
        raise ConversionError(f"{name} has no encoder equivalent; convert one of {sorted(heads)}")
    base = source if name == "BertModel" else source.bert
    config = encoder_config_from_bert(
        source.config, add_pooler=base.pooler is not None, mlm_head=name == "BertForMaskedLM"
    )
    return _convert(source, config, heads[name], _BERT_RENAMES)


# --------------------------------------------------------------------------------------------
# BART, Marian -> seq2seq
# --------------------------------------------------------------------------------------------

_BART_RENAMES = [
    (r"\.layernorm_embedding\.", ".embedding_norm."),
    (r"\.self_attn\.out_proj\.", ".self_attn.o_proj."),
    (r"\.encoder_attn\.out_proj\.", ".cross_attn.o_proj."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.self_attn_layer_norm\.", ".self_attn_norm."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_norm."),
    (r"\.fc1\.", ".mlp.up_proj."),
    (r"\.fc2\.", ".mlp.down_proj."),
    (r"(layers\.\d+)\.final_layer_norm\.", r"\1.ffn_norm."),
    # mBART-style final norms of each stack
    (r"(encoder|decoder)\.layer_norm\.", r"\1.norm."),
]


def seq2seq_config_from_bart(config: PreTrainedConfig) -> FinetuneSeq2SeqConfig:
    """Build the seq2seq config equivalent to a BART config.

    Args:
        config: A `BartConfig`.

    Returns:
        A `FinetuneSeq2SeqConfig` computing the same function.
    """
    _expect_model_type(config, ("bart",))
    return FinetuneSeq2SeqConfig(
        **_seq2seq_fields(config),
        positions="learned",
        position_offset=2,
        embedding_norm=True,
    )


def seq2seq_config_from_marian(config: PreTrainedConfig) -> FinetuneSeq2SeqConfig:
    """Build the seq2seq config equivalent to a Marian config.

    Args:
        config: A `MarianConfig` with shared encoder/decoder embeddings.

    Returns:
        A `FinetuneSeq2SeqConfig` computing the same function.
    """
    _expect_model_type(config, ("marian",))
    _expect(config, "share_encoder_decoder_embeddings", (True,))
    if config.decoder_vocab_size not in (None, config.vocab_size):
        raise ConversionError(
            f"decoder_vocab_size ({config.decoder_vocab_size}) differs from vocab_size "
            f"({config.vocab_size}); the seq2seq family has one shared vocabulary"
        )
    return FinetuneSeq2SeqConfig(
        **_seq2seq_fields(config),
        positions="sinusoidal",
        sinusoidal_layout="split",
        embedding_norm=False,
    )


def seq2seq_from_bart(
    model: ModelSource,
) -> FinetuneSeq2SeqForConditionalGeneration | FinetuneSeq2SeqModel:
    """Convert a BART model into the seq2seq family.

    Args:
        model: A `BartForConditionalGeneration` or `BartModel`, or a local checkpoint directory.

    Returns:
        `FinetuneSeq2SeqForConditionalGeneration` (or `FinetuneSeq2SeqModel` for a base model).
    """
    source = _load_source(model)
    return _convert_seq2seq(source, seq2seq_config_from_bart(source.config), _BART_RENAMES)


def seq2seq_from_marian(
    model: ModelSource,
) -> FinetuneSeq2SeqForConditionalGeneration | FinetuneSeq2SeqModel:
    """Convert a Marian model (shared embeddings) into the seq2seq family.

    Args:
        model: A `MarianMTModel` or `MarianModel`, or a local checkpoint directory.

    Returns:
        `FinetuneSeq2SeqForConditionalGeneration` (or `FinetuneSeq2SeqModel` for a base model).
    """
    source = _load_source(model)
    # Marian stores its fixed sinusoidal tables; ours are rebuilt from the config
    renames = [(r"embed_positions\.weight$", None), *_BART_RENAMES]
    return _convert_seq2seq(source, seq2seq_config_from_marian(source.config), renames)


def _seq2seq_fields(config: PreTrainedConfig) -> dict:
    """Fields shared by BART and Marian, after checking both stacks have the same shape."""
    for encoder_name, decoder_name in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if getattr(config, encoder_name) != getattr(config, decoder_name):
            raise ConversionError(
                f"{encoder_name} ({getattr(config, encoder_name)}) differs from {decoder_name} "
                f"({getattr(config, decoder_name)}); both seq2seq stacks share one shape"
            )
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.encoder_layers,
        "num_decoder_layers": config.decoder_layers,
        "num_attention_heads": config.encoder_attention_heads,
        "intermediate_size": config.encoder_ffn_dim,
        "ffn": _plain_ffn(config, "activation_function"),
        "norm": "layernorm",
        "norm_placement": "post",
        # BART and Marian build their LayerNorms with torch's default epsilon
        "norm_eps": 1e-5,
        "max_position_embeddings": config.max_position_embeddings,
        "hidden_dropout": float(config.dropout),
        "attention_dropout": float(config.attention_dropout),
        "activation_dropout": float(config.activation_dropout),
        "qkv_bias": True,
        "attention_out_bias": True,
        "mlp_bias": True,
        "scale_embeddings": bool(config.scale_embedding),
        "final_logits_bias": True,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.init_std,
        "use_cache": config.use_cache,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "dtype": config.dtype,
    }


def _convert_seq2seq(
    source: PreTrainedModel, config: FinetuneSeq2SeqConfig, renames: list
) -> FinetuneSeq2SeqForConditionalGeneration | FinetuneSeq2SeqModel:
    # The renames are prefix-free, so a base model (keys without `model.`) converts the same way
    target_class = FinetuneSeq2SeqForConditionalGeneration
    if not hasattr(source, "lm_head"):
        target_class = FinetuneSeq2SeqModel
    return _convert(source, config, target_class, renames)


# --------------------------------------------------------------------------------------------
# Directory to directory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    """How to convert one source model type."""

    target: str
    convert: Callable[[ModelSource], PreTrainedModel]


# Source model_type -> route. Looked up by name, like every registry of the project.
CONVERSIONS: dict[str, _Route] = {
    "llama": _Route("decoder", decoder_from_hf),
    "mistral": _Route("decoder", decoder_from_hf),
    "qwen2": _Route("decoder", decoder_from_hf),
    "bert": _Route("encoder", encoder_from_bert),
    "bart": _Route("seq2seq", seq2seq_from_bart),
    "marian": _Route("seq2seq", seq2seq_from_marian),
    "decoder": _Route("llama", decoder_to_llama),
}


def convert_checkpoint(
    src_dir: str | PathLike, out_dir: str | PathLike, to: str | None = None
) -> Path:
    """Convert a checkpoint directory and save the result, with the tokenizer files.

    The source type comes from `model_type` in `src_dir/config.json`: llama, mistral and qwen2
    become `decoder`; bert becomes `encoder`; bart and marian become `seq2seq`; a `decoder`
    checkpoint becomes `llama` (when its config is Llama-compatible).

    Args:
        src_dir: A local checkpoint directory (config.json + weights).
        out_dir: Where to save the converted model; created if missing.
        to: The expected target (`"decoder"`, `"encoder"`, `"seq2seq"` or `"llama"`); None
            accepts the only target the source has.

    Returns:
        `out_dir` as a `Path`.

    Raises:
        ConversionError: for an unknown source type, a `to` the source cannot become, or a
            source config the target cannot express.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    config_file = src_dir / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{src_dir} has no config.json: not a checkpoint directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    route = CONVERSIONS.get(model_type)
    if route is None:
        raise ConversionError(
            f"model_type {model_type!r} in {config_file} cannot be converted; supported sources: "
            f"{', '.join(sorted(CONVERSIONS))}"
        )
    if to is not None and to != route.target:
        raise ConversionError(
            f"to={to!r}: a {model_type!r} checkpoint converts to {route.target!r} only"
        )
    converted = route.convert(src_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    converted.save_pretrained(out_dir)
    _copy_tokenizer_files(src_dir, out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _convert(
    source: PreTrainedModel,
    config: PreTrainedConfig,
    target_class: type[PreTrainedModel],
    renames: list[tuple[str, str | None]],
) -> PreTrainedModel:
    """Build `target_class(config)` and load the renamed source weights into it, strictly."""
    config._attn_implementation = source.config._attn_implementation
    target = target_class(config)
    state_dict = _rename_state_dict(source.state_dict(), renames)
    missing, unexpected = target.load_state_dict(state_dict, strict=False)
    # Tied copies (lm_head.weight, encoder/decoder embed_tokens) come with their source weight
    tied = set(target.get_expanded_tied_weights_keys(all_submodels=True))
    missing = sorted(set(missing) - tied)
    if missing or unexpected:
        raise ConversionError(
            f"Converting {type(source).__name__} to {target_class.__name__}: weights missing in "
            f"the source {missing}, weights with no destination {sorted(unexpected)}"
        )
    target.tie_weights()
    target.to(next(source.parameters()).dtype)
    if getattr(source, "generation_config", None) is not None and target.can_generate():
        target.generation_config = copy.deepcopy(source.generation_config)
    return target.train(source.training)


def _rename_state_dict(
    state_dict: dict[str, torch.Tensor], renames: list[tuple[str, str | None]]
) -> dict[str, torch.Tensor]:
    """Apply the (pattern, replacement) renames in order; a None replacement drops the key."""
    renamed = {}
    for key, tensor in state_dict.items():
        new_key: str | None = key
        for pattern, replacement in renames:
            if re.search(pattern, new_key):
                if replacement is None:
                    new_key = None
                    break
                new_key = re.sub(pattern, replacement, new_key)
        if new_key is not None:
            renamed[new_key] = tensor
    return renamed


def _load_source(model: ModelSource) -> PreTrainedModel:
    """A model object as is, or the model saved in a local directory (its own architecture)."""
    if isinstance(model, PreTrainedModel):
        return model
    path = Path(model)
    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        model_class = transformers.AutoModel
    return model_class.from_pretrained(path)


def _common_fields(config: PreTrainedConfig) -> dict:
    """The fields every source names the same way."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "use_cache": getattr(config, "use_cache", True),
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "dtype": config.dtype,
    }


def _plain_ffn(config: PreTrainedConfig, field: str) -> str:
    activation = getattr(config, field)
    if activation not in _PLAIN_ACTIVATIONS:
        raise ConversionError(
            f"{field}={activation!r} has no equivalent ffn kind; supported: "
            f"{', '.join(sorted(_PLAIN_ACTIVATIONS))}"
        )
    return _PLAIN_ACTIVATIONS[activation]


def _expect_model_type(config: PreTrainedConfig, accepted: tuple[str, ...]) -> None:
    if config.model_type not in accepted:
        raise ConversionError(
            f"model_type={config.model_type!r}: this converter takes {', '.join(accepted)}"
        )


def _expect(config: PreTrainedConfig, field: str, accepted: tuple) -> None:
    value = getattr(config, field, None)
    if value not in accepted:
        raise ConversionError(
            f"{config.model_type} config has {field}={value!r}; conversion needs "
            f"{' or '.join(repr(a) for a in accepted)}"
        )


def _copy_tokenizer_files(src_dir: Path, out_dir: Path) -> None:
    for pattern in _TOKENIZER_FILE_PATTERNS:
        for file in src_dir.glob(pattern):
            if file.is_file():
                shutil.copy2(file, out_dir / file.name)


__all__ = [
    "CONVERSIONS",
    "ConversionError",
    "convert_checkpoint",
    "decoder_config_from_hf",
    "decoder_from_hf",
    "decoder_to_llama",
    "encoder_config_from_bert",
    "encoder_from_bert",
    "llama_config_from_decoder",
    "seq2seq_config_from_bart",
    "seq2seq_config_from_marian",
    "seq2seq_from_bart",
    "seq2seq_from_marian",
]
