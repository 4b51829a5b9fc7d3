"""Building blocks shared by the decoder, encoder and seq2seq families.

Norms, position encodings (rotary, sinusoidal, learned), the feed-forward network, attention
through transformers' attention registry, and the residual block that stacks them. Everything
here is configured by the shared config vocabulary of `configuration_common.TransformerConfig`.

This file is copied next to saved checkpoints for `trust_remote_code` loading: it may import
torch and transformers only, and siblings only as `from .x import y`.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_common import TransformerConfig

# The activation inside each FFN kind; the gated kind applies it to the gate branch.
FFN_ACTIVATIONS: dict[str, str] = {"relu": "relu", "gelu": "gelu", "silu": "silu", "swiglu": "silu"}


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale and no bias (Llama's formulation)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        # float32 here: the mean of squares overflows or loses precision in half precision
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def build_norm(config: TransformerConfig) -> nn.Module:
    """Return the norm layer named by `config.norm`.

    Args:
        config: The model config (reads `norm`, `hidden_size`, `norm_eps`).

    Returns:
        An `RMSNorm` or an `nn.LayerNorm` (with bias) over `hidden_size`.
    """
    if config.norm == "rmsnorm":
        return RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding built from `config.rope_parameters`.

    Any rope type transformers knows (default, linear, dynamic, yarn, llama3, longrope) works: the
    frequencies come from `ROPE_INIT_FUNCTIONS`, and `dynamic_rope_update` rescales them in the
    forward pass for the dynamic types, as in transformers' own models.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        # Not persistent: recomputed from the config, so checkpoints stay free of derived tensors
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(
        config: TransformerConfig, device: torch.device | None = None, **kwargs
    ) -> tuple[torch.Tensor, float]:
        """Inverse frequencies of the original RoPE.

        Args:
            config: The model config (reads `rope_parameters["rope_theta"]` and `head_dim`).
            device: Where to create the tensor.

        Returns:
            The inverse frequencies, shape (head_dim // 2,), and the attention scaling (1.0).
        """
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
        inv_freq = 1.0 / (base ** (exponents / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines and sines for `position_ids`, each (batch, seq, head_dim), in `x`'s dtype."""
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float)
        # float32 here: positions times frequencies lose precision in bf16 for long contexts
        # (batch, seq, 1) * (head_dim // 2,) -> (batch, seq, head_dim // 2)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)  # (batch, seq, head_dim)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate half the hidden dims: (x1, x2) -> (-x2, x1)."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions.

    Args:
        q: Queries, (batch, heads, seq, head_dim).
        k: Keys, (batch, kv_heads, seq, head_dim).
        cos: Cosines, (batch, seq, head_dim).
        sin: Sines, (batch, seq, head_dim).

    Returns:
        The rotated queries and keys, same shapes as given.
    """
    cos = cos.unsqueeze(1)  # (batch, 1, seq, head_dim): broadcast over heads
    sin = sin.unsqueeze(1)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal positions from "Attention Is All You Need".

    `layout="interleaved"` puts sin and cos of each frequency on neighbouring dims (the paper);
    `layout="split"` puts all sines in the first half and all cosines in the second (Marian's
    layout). The table is a non-persistent buffer: it is never saved, and `_init_weights`
    rebuilds it when a checkpoint is loaded on the meta device.
    """

    def __init__(self, num_positions: int, embedding_dim: int, layout: str = "interleaved") -> None:
        super().__init__()
        self.num_positions = num_positions
        self.embedding_dim = embedding_dim
        self.layout = layout
        self.weight = nn.Buffer(self.create_weight(), persistent=False)

    def create_weight(self) -> torch.Tensor:
        """The (num_positions, embedding_dim) table, computed in float64 then cast to float32."""
        positions = torch.arange(self.num_positions, dtype=torch.float64)[:, None]
        exponents = torch.arange(0, self.embedding_dim, 2, dtype=torch.float64) / self.embedding_dim
        angles = positions / (10000.0**exponents)  # (num_positions, embedding_dim // 2)
        if self.layout == "split":
            table = torch.cat((angles.sin(), angles.cos()), dim=-1)
        else:
            # (num_positions, dim // 2, 2) -> (num_positions, dim): sin, cos, sin, cos...
            table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
        return table.to(torch.float32)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings for `position_ids` (batch, seq) -> (batch, seq, embedding_dim)."""
        return nn.functional.embedding(position_ids, self.weight)


class LearnedPositionalEmbedding(nn.Embedding):
    """Learned absolute positions, optionally shifted by a fixed offset.

    BART reserves the first two rows of its table (a fairseq legacy), so its position `p` lives at
    row `p + 2`; `offset` reproduces that layout so converted weights keep their meaning.
    """

    def __init__(self, num_positions: int, embedding_dim: int, offset: int = 0) -> None:
        self.offset = offset
        super().__init__(num_positions + offset, embedding_dim)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings for `position_ids` (batch, seq) -> (batch, seq, embedding_dim)."""
        return super().forward(position_ids + self.offset)


class FeedForward(nn.Module):
    """Position-wise feed-forward network.

    Gated (`swiglu`): `down_proj(act(gate_proj(x)) * up_proj(x))`. Plain (`relu`, `gelu`,
    `silu`): `down_proj(act(up_proj(x)))`. The names match what peft's `all-linear`, DeepSpeed
    AutoTP and the tensor-parallel plans look for.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        hidden, intermediate, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.is_gated = config.ffn == "swiglu"
        if self.is_gated:
            self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)
        self.act_fn = ACT2FN[FFN_ACTIVATIONS[config.ffn]]
        self.activation_dropout = config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_gated:
            hidden = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        else:
            hidden = self.act_fn(self.up_proj(x))
        return self.down_proj(dropout(hidden, self.activation_dropout, self.training))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat key/value heads for grouped-query attention.

    (batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim), the same as
    `torch.repeat_interleave(x, n_rep, dim=1)` without the copy when `n_rep == 1`.
    """
    batch, num_key_value_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    # (batch, kv_heads, 1, seq, head_dim) -> (batch, kv_heads, n_rep, seq, head_dim)
    hidden_states = hidden_states[:, :, None, :, :].expand(
        batch, num_key_value_heads, n_rep, seq_len, head_dim
    )
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch attention, the fallback of the attention registry.

    Args:
        module: The calling attention module (reads `num_key_value_groups`, `training`).
        query: (batch, heads, q_len, head_dim).
        key: (batch, kv_heads, kv_len, head_dim).
        value: (batch, kv_heads, kv_len, head_dim).
        attention_mask: Additive float mask broadcastable to (batch, heads, q_len, kv_len), or None.
        scaling: Multiplier of the scores, usually head_dim ** -0.5.
        dropout: Dropout probability on the attention weights.

    Returns:
        The output, (batch, q_len, heads, head_dim), and the weights, (batch, heads, q_len, kv_len).
    """
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)

    # (batch, heads, q_len, kv_len)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask

    # float32 softmax: half-precision scores saturate
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)  # (batch, heads, q_len, head_dim)
    attn_output = attn_output.transpose(1, 2).contiguous()  # (batch, q_len, heads, head_dim)
    return attn_output, attn_weights


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads (MHA, GQA or MQA).

    Self-attention (causal or bidirectional) or cross-attention over encoder states. The kernel
    comes from `ALL_ATTENTION_FUNCTIONS` by `config._attn_implementation` (eager, sdpa, flash...).
    Head counts are never hard-coded in reshapes (`view(batch, seq, -1, head_dim)`), so a
    tensor-parallel shard holding a slice of the heads runs the same code.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_idx: int,
        is_causal: bool,
        is_cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        # Read by the sdpa and flash kernels when no mask tensor is given
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.sliding_window = getattr(config, "sliding_window", None) if is_causal else None

        q_size = config.num_attention_heads * self.head_dim
        kv_size = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.attention_out_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        key_value_states: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from `hidden_states` to itself, or to `key_value_states` for cross-attention.

        Args:
            hidden_states: (batch, q_len, hidden_size).
            attention_mask: Mask prepared by `transformers.masking_utils` for the active kernel.
            position_embeddings: Rotary (cos, sin), each (batch, q_len, head_dim); self-attention.
            cache: A `Cache`, or an `EncoderDecoderCache` in seq2seq decoders.
            key_value_states: Encoder output (batch, kv_len, hidden_size) for cross-attention.

        Returns:
            The output (batch, q_len, hidden_size) and the attention weights (eager, else None).
        """
        input_shape = hidden_states.shape[:-1]  # (batch, q_len)
        # (batch, q_len, heads, head_dim) -> (batch, heads, q_len, head_dim)
        query_states = (
            self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        )

        if self.is_cross_attention:
            key_states, value_states = self._cross_key_values(key_value_states, cache)
        else:
            key_states, value_states = self._project_key_values(hidden_states)
            if position_embeddings is not None:
                cos, sin = position_embeddings
                query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
            if cache is not None:
                if isinstance(cache, EncoderDecoderCache):
                    cache = cache.self_attention_cache
                key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        # (batch, q_len, heads, head_dim) -> (batch, q_len, heads * head_dim)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights

    def _project_key_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, len, hidden_size) -> keys and values, each (batch, kv_heads, len, head_dim)."""
        kv_shape = (*states.shape[:-1], -1, self.head_dim)  # (batch, len, kv_heads, head_dim)
        key_states = self.k_proj(states).view(kv_shape).transpose(1, 2)
        value_states = self.v_proj(states).view(kv_shape).transpose(1, 2)
        return key_states, value_states

    def _cross_key_values(
        self, encoder_states: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values over the encoder output, projected once and then read from the cache."""
        if isinstance(cache, EncoderDecoderCache):
            cross_cache = cache.cross_attention_cache
            # The encoder output does not change while decoding: project it on the first step only
            if cache.is_updated.get(self.layer_idx):
                layer = cross_cache.layers[self.layer_idx]
                return layer.keys, layer.values
            key_states, value_states = self._project_key_values(encoder_states)
            key_states, value_states = cross_cache.update(key_states, value_states, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
            return key_states, value_states
        return self._project_key_values(encoder_states)


class TransformerLayer(GradientCheckpointingLayer):
    """One transformer block: self-attention, optional cross-attention, feed-forward.

    Each sub-layer is wrapped in a residual connection with its norm placed before it (`pre`:
    GPT-2, Llama) or after the residual sum (`post`: the original Transformer, BERT, BART).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_idx: int,
        is_causal: bool,
        has_cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.hidden_dropout = config.hidden_dropout
        self.self_attn = Attention(config, layer_idx, is_causal=is_causal)
        self.self_attn_norm = build_norm(config)
        self.cross_attn = None
        if has_cross_attention:
            self.cross_attn = Attention(config, layer_idx, is_causal=False, is_cross_attention=True)
            self.cross_attn_norm = build_norm(config)
        self.mlp = FeedForward(config)
        self.ffn_norm = build_norm(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """Run the block on (batch, seq, hidden_size) states; returns the same shape."""

        def self_attention(states: torch.Tensor) -> torch.Tensor:
            return self.self_attn(
                states,
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                **kwargs,
            )[0]

        def cross_attention(states: torch.Tensor) -> torch.Tensor:
            # position_ids and packing metadata describe the decoder side, not the encoder keys
            cross_kwargs = {k: v for k, v in kwargs.items() if k.startswith("output_")}
            return self.cross_attn(
                states,
                attention_mask=encoder_attention_mask,
                cache=cache,
                key_value_states=encoder_hidden_states,
                **cross_kwargs,
            )[0]

        hidden_states = self._residual(self_attention, self.self_attn_norm, hidden_states)
        if self.cross_attn is not None and encoder_hidden_states is not None:
            hidden_states = self._residual(cross_attention, self.cross_attn_norm, hidden_states)
        return self._residual(self.mlp, self.ffn_norm, hidden_states)

    def _residual(
        self,
        sublayer: Callable[[torch.Tensor], torch.Tensor],
        norm: nn.Module,
        hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """`x + sublayer(norm(x))` for pre-norm, `norm(x + sublayer(x))` for post-norm."""
        if self.pre_norm:
            return hidden_states + self._dropout(sublayer(norm(hidden_states)))
        return norm(hidden_states + self._dropout(sublayer(hidden_states)))

    def _dropout(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return dropout(hidden_states, self.hidden_dropout, self.training)


def dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`nn.functional.dropout`, skipped at p=0 (where it would still draw a mask in training)."""
    if p > 0.0 and training:
        return nn.functional.dropout(hidden_states, p=p, training=True)
    return hidden_states


def scale_and_position(
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    embed_positions: nn.Module | None,
    embed_scale: float,
) -> torch.Tensor:
    """Scale token embeddings and add absolute positions, if the model uses them.

    Args:
        inputs_embeds: Token embeddings, (batch, seq, hidden_size).
        position_ids: (batch or 1, seq).
        embed_positions: A sinusoidal or learned position table, or None (rotary or no positions).
        embed_scale: Multiplier of the token embeddings (sqrt(hidden_size) in BART/Marian, else 1).

    Returns:
        (batch, seq, hidden_size).
    """
    if embed_scale != 1.0:
        inputs_embeds = inputs_embeds * embed_scale
    if embed_positions is not None:
        inputs_embeds = inputs_embeds + embed_positions(position_ids).to(inputs_embeds.dtype)
    return inputs_embeds


def build_position_embedding(config: TransformerConfig) -> nn.Module | None:
    """The absolute position table for `config.positions`, or None for rotary positions."""
    if config.positions == "sinusoidal":
        return SinusoidalPositionalEmbedding(
            config.max_position_embeddings, config.hidden_size, layout=config.sinusoidal_layout
        )
    if config.positions == "learned":
        return LearnedPositionalEmbedding(
            config.max_position_embeddings, config.hidden_size, offset=config.position_offset
        )
    return None


def embedding_scale(config: TransformerConfig) -> float:
    """sqrt(hidden_size) when `config.scale_embeddings`, else 1.0."""
    return math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
