"""Decoder-only transformer (causal language model).

With its defaults (`ffn="swiglu"`, `norm="rmsnorm"`, pre-norm, rotary positions) it computes the
same function as Llama, Mistral and Qwen2, whose checkpoints `finetune.models.convert` turns
into this model; other settings give GPT-style stacks (learned or sinusoidal positions, gelu,
LayerNorm, post-norm).
"""

from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .compat import cache_field, mask_cache_arg, output_cache, resolve_cache
from .configuration_decoder import FinetuneDecoderConfig
from .layers import (
    Attention,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    TransformerLayer,
    build_norm,
    build_position_embedding,
    dropout,
    embedding_scale,
    scale_and_position,
)


class FinetuneDecoderPreTrainedModel(PreTrainedModel):
    """Weight initialisation and capability flags of the decoder family."""

    config: FinetuneDecoderConfig
    config_class = FinetuneDecoderConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["TransformerLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs: ClassVar[dict] = {
        "hidden_states": TransformerLayer,
        "attentions": Attention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SinusoidalPositionalEmbedding):
            init.copy_(module.weight, module.create_weight())


class FinetuneDecoderModel(FinetuneDecoderPreTrainedModel):
    """The decoder stack: embeddings, `num_hidden_layers` causal blocks, final norm (pre-norm)."""

    def __init__(self, config: FinetuneDecoderConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_scale = embedding_scale(config)
        self.embed_positions = build_position_embedding(config)
        self.rotary_emb = RotaryEmbedding(config) if config.positions == "rope" else None
        self.embedding_norm = build_norm(config) if config.embedding_norm else None
        self.layers = nn.ModuleList(
            [TransformerLayer(config, i, is_causal=True) for i in range(config.num_hidden_layers)]
        )
        # Post-norm blocks end with a norm already; Identity keeps the module name for pp plans
        self.norm = build_norm(config) if config.norm_placement == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """Run the stack.

        Args:
            input_ids: Token ids, (batch, seq). Exactly one of `input_ids` and `inputs_embeds`.
            attention_mask: 1 for real tokens, 0 for padding, (batch, past + seq).
            position_ids: (batch, seq). Positions restarting at 0 inside a row mark packed
                samples, which then do not attend to each other (when `attention_mask` is None).
            cache: Cache from earlier steps.
            inputs_embeds: Token embeddings instead of `input_ids`, (batch, seq, hidden_size).
            use_cache: Return a cache (defaults to `config.use_cache`).
            past_key_values: The cache's name before transformers 5.24 (`generate` passes it
                so there); either name works under every release.

        Returns:
            `BaseModelOutputWithPast` with `last_hidden_state` (batch, seq, hidden_size).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = resolve_cache(cache, past_key_values)

        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = (position_ids + past_seen).unsqueeze(0)  # (1, seq)

        # The mask is built before a fresh cache is created: masking_utils only detects packed
        # samples (restarting position_ids) when it is given no cache, and an empty cache adds
        # nothing to the mask. So packing works even when a training loop leaves use_cache on.
        mask_function = (
            create_sliding_window_causal_mask if self.config.sliding_window else create_causal_mask
        )
        causal_mask = mask_function(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **mask_cache_arg(cache),
        )
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        hidden_states = scale_and_position(
            inputs_embeds, position_ids, self.embed_positions, self.embed_scale
        )
        if self.embedding_norm is not None:
            hidden_states = self.embedding_norm(hidden_states)
        hidden_states = dropout(hidden_states, self.config.hidden_dropout, self.training)
        position_embeddings = None
        if self.rotary_emb is not None:
            position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)

        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **cache_field(cache))


class FinetuneDecoderForCausalLM(FinetuneDecoderPreTrainedModel, GenerationMixin):
    """The decoder stack with a language-modelling head; generates with `generate()`."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}
    _pp_plan: ClassVar[dict] = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: FinetuneDecoderConfig) -> None:
        super().__init__(config)
        self.model = FinetuneDecoderModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """Next-token logits, and the loss when `labels` are given.

        Args:
            input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache,
                past_key_values: As in `FinetuneDecoderModel.forward`.
            labels: Token ids (batch, seq), -100 where no loss is wanted. They are the inputs
                themselves: the shift by one happens inside the loss.
            logits_to_keep: Only compute logits for the last this-many positions (0 = all), or
                for the positions in a tensor; `generate` uses 1.

        Returns:
            `CausalLMOutputWithPast` with `logits` (batch, kept positions, vocab_size).
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **cache_field(output_cache(outputs)),
        )


class FinetuneDecoderForSequenceClassification(FinetuneDecoderPreTrainedModel):
    """The decoder stack with a linear head read at each sequence's last token: a classifier,
    or with `num_labels=1` a reward model (TRL's RewardTrainer). The last token is the last
    one the attention mask covers (padding on either side), or without a mask the last one
    that is not padding, as in transformers' Llama."""

    def __init__(self, config: FinetuneDecoderConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = FinetuneDecoderModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        """Sequence logits, and the loss when `labels` are given.

        Args:
            input_ids, attention_mask, position_ids, inputs_embeds, use_cache: As in
                `FinetuneDecoderModel.forward` (no cache is kept: one pass scores a sequence).
            labels: Class ids (batch,), or float targets for regression.

        Returns:
            `SequenceClassifierOutputWithPast` with `logits` (batch, num_labels).
        """
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)  # (batch, seq, num_labels)
        batch = logits.shape[0]
        last = self._last_positions(input_ids, attention_mask, logits.shape[1], logits.device)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, pooled_logits=pooled, config=self.config, **kwargs
            )
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _last_positions(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        length: int,
        device: torch.device,
    ) -> torch.Tensor | int:
        """Index of each sequence's last real token (-1, the last position, when unknown)."""
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask.to(device, torch.int32)
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = (input_ids != self.config.pad_token_id).to(device, torch.int32)
        else:
            return -1
        positions = torch.arange(length, device=device, dtype=torch.int32)
        return (positions * real).argmax(-1)


__all__ = [
    "FinetuneDecoderForCausalLM",
    "FinetuneDecoderForSequenceClassification",
    "FinetuneDecoderModel",
    "FinetuneDecoderPreTrainedModel",
]
