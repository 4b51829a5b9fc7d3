"""Configuration of the decoder-only family (causal language models)."""

from typing import ClassVar

from .configuration_common import TransformerConfig, _require


class FinetuneDecoderConfig(TransformerConfig):
    r"""Configuration of `FinetuneDecoderModel` and `FinetuneDecoderForCausalLM`.

    Takes every field of `TransformerConfig` (the shared vocabulary: sizes, heads, `ffn`, `norm`,
    `norm_placement`, `positions`, dropout, biases...), plus:

    Args:
        sliding_window: If set, each token attends to at most this many previous tokens
            (Mistral). None attends to the whole prefix.

    Example:
        ```python
        >>> from finetune.models import FinetuneDecoderConfig, FinetuneDecoderForCausalLM
        >>> config = FinetuneDecoderConfig(
        ...     hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...     num_key_value_heads=2, intermediate_size=128, vocab_size=1000,
        ... )
        >>> model = FinetuneDecoderForCausalLM(config)
        ```
    """

    model_type = "decoder"
    base_model_tp_plan: ClassVar[dict[str, str]] = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan: ClassVar[dict[str, tuple[list[str], list[str]]]] = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    family_auto_map: ClassVar[dict[str, str]] = {
        "AutoConfig": "configuration_decoder.FinetuneDecoderConfig",
        "AutoModel": "modeling_decoder.FinetuneDecoderModel",
        "AutoModelForCausalLM": "modeling_decoder.FinetuneDecoderForCausalLM",
        "AutoModelForSequenceClassification": (
            "modeling_decoder.FinetuneDecoderForSequenceClassification"
        ),
    }

    sliding_window: int | None = None

    def validate_architecture(self) -> None:
        """Check the shared fields, then the decoder's own."""
        super().validate_architecture()
        _require(
            self.sliding_window is None
            or (isinstance(self.sliding_window, int) and self.sliding_window > 0),
            f"sliding_window must be None or a positive integer, got {self.sliding_window!r}",
        )


__all__ = ["FinetuneDecoderConfig"]
