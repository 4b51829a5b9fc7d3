"""Configuration of the encoder-only family (masked LM, sequence classification)."""

from typing import ClassVar, Literal

from .configuration_common import TransformerConfig, _choice, _require

CLASSIFIER_POOLING = ("cls", "mean")


class FinetuneEncoderConfig(TransformerConfig):
    r"""Configuration of `FinetuneEncoderModel` and its masked-LM and classification heads.

    Takes every field of `TransformerConfig` (the shared vocabulary), plus what BERT-style
    checkpoints need:

    Args:
        type_vocab_size: Number of token types (segments); 0 for no token-type embeddings.
        add_pooler: A pooler (dense + tanh over the first token) after the stack (BERT).
        mlm_head_transform: Dense + activation + norm before the masked-LM projection (BERT).
        mlm_head_bias: Bias on the masked-LM output projection (BERT).
        classifier_pooling: How sequence classification summarises a sequence when there is no
            pooler: `"cls"` (first token) or `"mean"` (mean over non-padding tokens).
        classifier_dropout: Dropout before the classifier; None uses `hidden_dropout`.

    Example:
        ```python
        >>> from finetune.models import FinetuneEncoderConfig, FinetuneEncoderForMaskedLM
        >>> config = FinetuneEncoderConfig(
        ...     hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...     intermediate_size=128, vocab_size=1000,
        ... )
        >>> model = FinetuneEncoderForMaskedLM(config)
        ```
    """

    model_type = "encoder"
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
        "AutoConfig": "configuration_encoder.FinetuneEncoderConfig",
        "AutoModel": "modeling_encoder.FinetuneEncoderModel",
        "AutoModelForMaskedLM": "modeling_encoder.FinetuneEncoderForMaskedLM",
        "AutoModelForSequenceClassification": (
            "modeling_encoder.FinetuneEncoderForSequenceClassification"
        ),
    }

    type_vocab_size: int = 0
    add_pooler: bool = False
    mlm_head_transform: bool = False
    mlm_head_bias: bool = False
    classifier_pooling: Literal["cls", "mean"] = "cls"
    classifier_dropout: float | None = None

    def validate_architecture(self) -> None:
        """Check the shared fields, then the encoder's own."""
        super().validate_architecture()
        _require(
            isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0,
            f"type_vocab_size must be an integer >= 0 (0 = no token types), "
            f"got {self.type_vocab_size!r}",
        )
        _choice("classifier_pooling", self.classifier_pooling, CLASSIFIER_POOLING)
        _require(
            self.classifier_dropout is None or 0.0 <= self.classifier_dropout < 1.0,
            f"classifier_dropout must be None or in [0, 1), got {self.classifier_dropout}",
        )


__all__ = ["FinetuneEncoderConfig"]
