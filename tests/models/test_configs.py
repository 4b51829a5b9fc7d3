"""Config defaults, validation messages, serialisation and the architecture registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from finetune.models import (
    ARCHITECTURES,
    FinetuneDecoderConfig,
    FinetuneEncoderConfig,
    FinetuneSeq2SeqConfig,
)

from . import tiny


def test_registry_names_the_three_families() -> None:
    assert dict(ARCHITECTURES) == {
        "decoder": FinetuneDecoderConfig,
        "encoder": FinetuneEncoderConfig,
        "seq2seq": FinetuneSeq2SeqConfig,
    }
    for name, config_class in ARCHITECTURES.items():
        assert config_class.model_type == name
        assert type(AutoConfig.for_model(name, **tiny.SIZES)) is config_class


def test_defaults_are_filled_in() -> None:
    config = FinetuneDecoderConfig(hidden_size=96, num_attention_heads=6)
    assert config.num_key_value_heads == 6
    assert config.head_dim == 16
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert FinetuneSeq2SeqConfig(num_hidden_layers=3).num_decoder_layers == 3
    # Legacy rope_theta keyword still lands in rope_parameters
    assert FinetuneDecoderConfig(rope_theta=500000.0).rope_parameters["rope_theta"] == 500000.0
    # Rope parameters mean nothing without rotary positions, and are not written at all
    assert FinetuneEncoderConfig(positions="learned").rope_parameters is None
    for positions in ("learned", "sinusoidal"):
        assert "rope_parameters" not in FinetuneDecoderConfig(positions=positions).to_dict()
    assert "rope_parameters" in FinetuneDecoderConfig().to_dict()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"hidden_size": 100, "num_attention_heads": 6},
            "num_attention_heads (6) must divide hidden_size (100)",
        ),
        (
            {"num_attention_heads": 6, "num_key_value_heads": 4},
            "num_key_value_heads (4) must divide num_attention_heads (6)",
        ),
        ({"ffn": "swish"}, "ffn must be one of 'relu', 'gelu', 'silu', 'swiglu'; got 'swish'"),
        ({"norm": "batchnorm"}, "norm must be one of 'layernorm', 'rmsnorm'; got 'batchnorm'"),
        ({"norm_placement": "sandwich"}, "norm_placement must be one of 'pre', 'post'"),
        ({"positions": "alibi"}, "positions must be one of 'rope', 'sinusoidal', 'learned'"),
        ({"sinusoidal_layout": "zigzag"}, "sinusoidal_layout must be one of"),
        ({"head_dim": 7}, "head_dim (7) must be even for positions='rope'"),
        ({"hidden_dropout": 1.0}, "hidden_dropout must be in [0, 1), got 1.0"),
        ({"intermediate_size": 0}, "intermediate_size must be a positive integer, got 0"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
        ({"position_offset": -1}, "position_offset must be >= 0, got -1"),
        ({"sliding_window": 0}, "sliding_window must be None or a positive integer, got 0"),
    ],
)
def test_decoder_validation_names_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        FinetuneDecoderConfig(**fields)
    assert message in str(error.value)


def test_explicit_head_dim_lifts_the_divisibility_rule() -> None:
    config = FinetuneDecoderConfig(hidden_size=100, num_attention_heads=6, head_dim=16)
    assert config.head_dim == 16


def test_family_specific_validation() -> None:
    with pytest.raises(ValueError, match="classifier_pooling must be one of 'cls', 'mean'"):
        FinetuneEncoderConfig(classifier_pooling="max")
    with pytest.raises(ValueError, match=r"type_vocab_size must be an integer >= 0"):
        FinetuneEncoderConfig(type_vocab_size=-1)
    with pytest.raises(ValueError, match="num_decoder_layers must be a positive integer"):
        FinetuneSeq2SeqConfig(num_decoder_layers=0)
    with pytest.raises(ValueError, match="must be even for positions='sinusoidal'"):
        FinetuneSeq2SeqConfig(hidden_size=63, num_attention_heads=3, positions="sinusoidal")


@pytest.mark.parametrize("config_class", sorted(ARCHITECTURES.values(), key=lambda c: c.__name__))
def test_config_round_trips_through_json(config_class: type, tmp_path: Path) -> None:
    config = config_class(**tiny.SIZES, positions="learned", position_offset=2, hidden_dropout=0.1)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == config_class.model_type
    assert saved["auto_map"]["AutoConfig"].endswith(config_class.__name__)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_class
    assert loaded.to_diff_dict() == config.to_diff_dict()
