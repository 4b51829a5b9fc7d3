"""Configuration of the encoder-decoder family (sequence-to-sequence generation)."""

from typing import ClassVar

from .configuration_common import TransformerConfig, _require


class FinetuneSeq2SeqConfig(TransformerConfig):
    r"""Configuration of `FinetuneSeq2SeqModel` and `FinetuneSeq2SeqForConditionalGeneration`.

    Takes every field of `TransformerConfig` (the shared vocabulary; `num_hidden_layers` is the
    encoder depth, and both stacks share widths, heads and the FFN kind), plus:

    Args:
        num_decoder_layers: Decoder depth. Defaults to `num_hidden_layers`.
        decoder_start_token_id: First token fed to the decoder; labels are shifted right
            behind it to build decoder inputs.
        final_logits_bias: A fixed (non-trained) bias added to the output logits (BART, Marian).

    Example:
        ```python
        >>> from finetune.models import (
        ...     FinetuneSeq2SeqConfig, FinetuneSeq2SeqForConditionalGeneration,
        ... )
        >>> config = FinetuneSeq2SeqConfig(
        ...     hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...     intermediate_size=128, vocab_size=1000, pad_token_id=0, decoder_start_token_id=0,
        ... )
        >>> model = FinetuneSeq2SeqForConditionalGeneration(config)
        ```
    """

    model_type = "seq2seq"
    # Relative to each stack: the encoder and the decoder are PreTrainedModels of their own and
    # each applies this plan to its `layers` (transformers prefixes them with encoder./decoder.).
    base_model_tp_plan: ClassVar[dict[str, str]] = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.cross_attn.q_proj": "colwise",
        "layers.*.cross_attn.k_proj": "colwise",
        "layers.*.cross_attn.v_proj": "colwise",
        "layers.*.cross_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    # No pipeline plan: a pipeline over two stacks joined by cross-attention is not one chain of
    # modules, which is what `base_model_pp_plan` describes.
    base_model_pp_plan: ClassVar[dict | None] = None
    family_auto_map: ClassVar[dict[str, str]] = {
        "AutoConfig": "configuration_seq2seq.FinetuneSeq2SeqConfig",
        "AutoModel": "modeling_seq2seq.FinetuneSeq2SeqModel",
        "AutoModelForSeq2SeqLM": "modeling_seq2seq.FinetuneSeq2SeqForConditionalGeneration",
    }

    num_decoder_layers: int | None = None
    decoder_start_token_id: int | None = None
    final_logits_bias: bool = False
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_hidden_layers
        super().__post_init__(**kwargs)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None):
        """The config of one stack; with `decoder=True`, `num_hidden_layers` is the decoder depth.

        transformers sizes generation caches from `get_text_config(decoder=True)`, so the
        decoder depth must show there when it differs from the encoder's.
        """
        config = super().get_text_config(decoder=decoder, encoder=encoder)
        if decoder and not encoder:
            config.num_hidden_layers = self.num_decoder_layers
        return config

    def validate_architecture(self) -> None:
        """Check the shared fields, then the seq2seq ones."""
        super().validate_architecture()
        _require(
            isinstance(self.num_decoder_layers, int) and self.num_decoder_layers > 0,
            f"num_decoder_layers must be a positive integer, got {self.num_decoder_layers!r}",
        )
        _require(
            self.is_encoder_decoder,
            "is_encoder_decoder must be True for the seq2seq family",
        )


__all__ = ["FinetuneSeq2SeqConfig"]
