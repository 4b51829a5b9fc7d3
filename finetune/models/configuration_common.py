"""The config vocabulary shared by the decoder, encoder and seq2seq families.

One set of names describes every transformer stack the project builds: sizes, attention heads,
the FFN kind, norm kind and placement, the position encoding, dropout and biases, plus the few
switches that converted checkpoints need (embedding LayerNorm, embedding scaling, position
offset, Marian's sinusoidal layout). Each family subclasses `TransformerConfig` and adds its
own fields (token types and pooler for the encoder, decoder depth for seq2seq...).

Copied next to saved checkpoints for `trust_remote_code`: imports transformers only.
"""

from typing import ClassVar, Literal

from transformers.configuration_utils import PreTrainedConfig

FFN_KINDS = ("relu", "gelu", "silu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
POSITION_KINDS = ("rope", "sinusoidal", "learned")
SINUSOIDAL_LAYOUTS = ("interleaved", "split")


class TransformerConfig(PreTrainedConfig):
    r"""Fields common to the project's architectures (never instantiated on its own).

    Args:
        vocab_size: Number of token ids.
        hidden_size: Width of the residual stream.
        num_hidden_layers: Number of transformer blocks (the encoder's, in seq2seq).
        num_attention_heads: Query heads per attention layer.
        num_key_value_heads: Key/value heads: equal to `num_attention_heads` for multi-head
            attention, fewer for grouped-query, 1 for multi-query. Defaults to
            `num_attention_heads`.
        head_dim: Width of each head. Defaults to `hidden_size // num_attention_heads`.
        intermediate_size: Inner width of the feed-forward network.
        ffn: Feed-forward kind: `"relu"`, `"gelu"`, `"silu"` (plain, `up_proj`/`down_proj`) or
            `"swiglu"` (gated, adds `gate_proj`).
        norm: `"rmsnorm"` or `"layernorm"`.
        norm_placement: `"pre"` (norm inside each residual branch, plus a final norm after the
            last block) or `"post"` (norm after each residual sum, no final norm).
        norm_eps: Epsilon of every norm.
        positions: `"rope"` (rotary, from `rope_parameters`), `"sinusoidal"` (fixed table) or
            `"learned"` (trained table of `max_position_embeddings` rows).
        rope_parameters: transformers' rotary parameters, e.g. `{"rope_type": "default",
            "rope_theta": 10000.0}`; any rope type of `transformers.modeling_rope_utils` works.
            Only used with `positions="rope"`.
        max_position_embeddings: Longest sequence the position encoding is built for.
        position_offset: Rows skipped at the start of a learned position table (2 in BART).
        sinusoidal_layout: `"interleaved"` (sin/cos on alternate dims, the paper) or `"split"`
            (sines then cosines, Marian).
        hidden_dropout: Dropout on embeddings and on each residual branch.
        attention_dropout: Dropout on attention weights.
        activation_dropout: Dropout inside the feed-forward network, after the activation.
        qkv_bias: Bias on `q_proj`, `k_proj`, `v_proj` (BERT, BART, Qwen2).
        attention_out_bias: Bias on `o_proj` (BERT, BART).
        mlp_bias: Bias on the feed-forward projections (BERT, BART).
        embedding_norm: A norm right after the embeddings (BERT, BART's `layernorm_embedding`).
        scale_embeddings: Multiply token embeddings by `sqrt(hidden_size)` (BART, Marian).
        tie_word_embeddings: Share the output projection with the input embeddings.
        initializer_range: Standard deviation of the normal weight initialisation.
        use_cache: Return key/value caches from forward passes (generation).
        pad_token_id: Padding token id.
        bos_token_id: Beginning-of-sequence token id.
        eos_token_id: End-of-sequence token id(s).
    """

    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache", "past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int = 2048
    ffn: Literal["relu", "gelu", "silu", "swiglu"] = "swiglu"
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_placement: Literal["pre", "post"] = "pre"
    norm_eps: float = 1e-6
    positions: Literal["rope", "sinusoidal", "learned"] = "rope"
    rope_parameters: dict | None = None
    max_position_embeddings: int = 2048
    position_offset: int = 0
    sinusoidal_layout: Literal["interleaved", "split"] = "interleaved"
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    qkv_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    embedding_norm: bool = False
    scale_embeddings: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    # The Auto classes a saved folder of this family loads through ({"AutoModel": "modeling_x.Y"}).
    # Written into `auto_map` so that `trust_remote_code` finds every head, not only the saved one.
    family_auto_map: ClassVar[dict[str, str]] = {}

    def __post_init__(self, **kwargs) -> None:
        _require(
            isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0,
            f"num_attention_heads must be a positive integer, got {self.num_attention_heads!r}",
        )
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            # Checked before the base class runs: its rope validation reads head_dim
            _require(
                self.hidden_size % self.num_attention_heads == 0,
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size "
                f"({self.hidden_size}); pick a head count that divides it, or set head_dim",
            )
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        if self.positions != "rope":
            # The base class fills in default rope parameters for every config: meaningless here
            self.rope_parameters = None
        plan = type(self).base_model_tp_plan
        if plan and self.ffn != "swiglu":
            # A plain feed-forward has no gate_proj: the plan names only modules that exist
            # (an instance attribute; transformers never writes the plan into config.json)
            self.base_model_tp_plan = {
                key: style for key, style in plan.items() if not key.endswith(".gate_proj")
            }
        self.auto_map = {**self.family_auto_map, **(getattr(self, "auto_map", None) or {})}
        self.validate_architecture()
        if self.positions == "rope":
            self.validate_rope()

    def to_dict(self) -> dict:
        output = super().to_dict()
        if self.positions != "rope":
            # Not written as `null` either: tools that look for the key take the model for a
            # RoPE model
            output.pop("rope_parameters", None)
        return output

    def validate_architecture(self) -> None:
        """Check the architecture fields together.

        Raises:
            ValueError: naming the field, its value and what would be accepted.
        """
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and value > 0,
                f"{name} must be a positive integer, got {value!r}",
            )
        _choice("ffn", self.ffn, FFN_KINDS)
        _choice("norm", self.norm, NORM_KINDS)
        _choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        _choice("positions", self.positions, POSITION_KINDS)
        _choice("sinusoidal_layout", self.sinusoidal_layout, SINUSOIDAL_LAYOUTS)
        _require(
            isinstance(self.num_key_value_heads, int)
            and self.num_key_value_heads > 0
            and self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads "
            f"({self.num_attention_heads}); use {self.num_attention_heads} for multi-head, "
            "1 for multi-query, or another divisor for grouped-query attention",
        )
        _require(
            isinstance(self.head_dim, int) and self.head_dim > 0,
            f"head_dim must be a positive integer, got {self.head_dim!r}",
        )
        if self.positions == "rope":
            _require(
                self.head_dim % 2 == 0,
                f"head_dim ({self.head_dim}) must be even for positions='rope'",
            )
        if self.positions == "sinusoidal":
            _require(
                self.hidden_size % 2 == 0,
                f"hidden_size ({self.hidden_size}) must be even for positions='sinusoidal'",
            )
        _require(
            self.max_position_embeddings > 0,
            f"max_position_embeddings must be positive, got {self.max_position_embeddings}",
        )
        _require(
            self.position_offset >= 0,
            f"position_offset must be >= 0, got {self.position_offset}",
        )
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
        _require(self.norm_eps > 0, f"norm_eps must be positive, got {self.norm_eps}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    _require(
        value in accepted,
        f"{name} must be one of {', '.join(repr(a) for a in accepted)}; got {value!r}",
    )
