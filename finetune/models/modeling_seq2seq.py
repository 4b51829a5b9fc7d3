"""Encoder-decoder transformer for sequence-to-sequence generation.

Configured as BART (learned positions with offset 2, embedding LayerNorm, post-norm, gelu,
final logits bias) or Marian (sinusoidal positions in the split layout, scaled embeddings) it
computes the same function as those transformers models, whose checkpoints
`finetune.models.convert` turns into this model.
"""

from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_causal_mask,
    find_packed_sequence_indices,
    packed_sequence_mask_function,
)
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .compat import cache_field, mask_cache_arg, output_cache, resolve_cache
from .configuration_seq2seq import FinetuneSeq2SeqConfig
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


def shift_tokens_right(
    input_ids: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None
) -> torch.Tensor:
    """Build decoder inputs from labels: prepend the start token, drop the last token.

    Args:
        input_ids: Labels, (batch, seq), with -100 where no loss is wanted.
        pad_token_id: Replaces -100 in the shifted ids.
        decoder_start_token_id: First decoder token.

    Returns:
        (batch, seq) decoder input ids.
    """
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id must be set to build decoder inputs")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to build decoder inputs")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


class FinetuneSeq2SeqPreTrainedModel(PreTrainedModel):
    """Weight initialisation and capability flags of the seq2seq family."""

    config: FinetuneSeq2SeqConfig
    config_class = FinetuneSeq2SeqConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["TransformerLayer"]
    _skip_keys_device_placement: ClassVar[list[str]] = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def init_parallel_plans(self) -> None:
        """The tensor-parallel plan as it fits this family.

        transformers gives every stack (encoder, decoder and the model holding them) the
        config's `base_model_tp_plan` and shards each stack's `embed_tokens` over the
        vocabulary. Here the stacks and the tied head share one table, `shared`, which a
        stack's plan cannot shard consistently: the embeddings stay whole (and so does a head
        tied to them), the encoder has no cross-attention to shard, and the model holding the
        stacks has no `layers` of its own.
        """
        super().init_parallel_plans()
        plan = self._tp_plan
        if not plan:
            return
        if "embed_tokens" in plan:
            plan["embed_tokens"] = "replicate"
        if isinstance(self, FinetuneSeq2SeqEncoder):
            self._tp_plan = {k: v for k, v in plan.items() if ".cross_attn." not in k}
        elif isinstance(self, FinetuneSeq2SeqModel):
            self._tp_plan = {k: v for k, v in plan.items() if not k.startswith("layers.")}
        elif (
            isinstance(self, FinetuneSeq2SeqForConditionalGeneration)
            and self.config.tie_word_embeddings
        ):
            plan["lm_head"] = "replicate"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SinusoidalPositionalEmbedding):
            init.copy_(module.weight, module.create_weight())
        elif (
            isinstance(module, FinetuneSeq2SeqForConditionalGeneration)
            and module.final_logits_bias is not None
        ):
            init.zeros_(module.final_logits_bias)


class FinetuneSeq2SeqEncoder(FinetuneSeq2SeqPreTrainedModel):
    """The encoder stack: embeddings, `num_hidden_layers` bidirectional blocks, final norm."""

    _can_record_outputs: ClassVar[dict] = {
        "hidden_states": TransformerLayer,
        "attentions": Attention,
    }

    def __init__(self, config: FinetuneSeq2SeqConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_scale = embedding_scale(config)
        self.embed_positions = build_position_embedding(config)
        self.rotary_emb = RotaryEmbedding(config) if config.positions == "rope" else None
        self.embedding_norm = build_norm(config) if config.embedding_norm else None
        self.layers = nn.ModuleList(
            [TransformerLayer(config, i, is_causal=False) for i in range(config.num_hidden_layers)]
        )
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
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """Encode the source.

        Args:
            input_ids: Source ids, (batch, src_len). Exactly one of `input_ids` and `inputs_embeds`.
            attention_mask: 1 for real tokens, 0 for padding, (batch, src_len).
            position_ids: (batch, src_len); restarting positions mark packed samples.
            inputs_embeds: Token embeddings instead of `input_ids`, (batch, src_len, hidden_size).

        Returns:
            `BaseModelOutput` with `last_hidden_state` (batch, src_len, hidden_size).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        packed_mask_function = None
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = position_ids.unsqueeze(0)  # (1, src_len)
        elif attention_mask is None:
            # Bidirectional masks do not detect packing by themselves: add the boundary rule
            packed = find_packed_sequence_indices(position_ids.expand(inputs_embeds.shape[0], -1))
            if packed is not None:
                packed_mask_function = packed_sequence_mask_function(packed)
        mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            and_mask_function=packed_mask_function,
        )

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
                attention_mask=mask,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        return BaseModelOutput(last_hidden_state=self.norm(hidden_states))


class FinetuneSeq2SeqDecoder(FinetuneSeq2SeqPreTrainedModel):
    """The decoder stack: causal self-attention, cross-attention to the encoder, feed-forward."""

    _can_record_outputs: ClassVar[dict] = {
        "hidden_states": OutputRecorder(
            TransformerLayer, num_hidden_layers_key="num_decoder_layers"
        ),
        "attentions": OutputRecorder(Attention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(Attention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: FinetuneSeq2SeqConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_scale = embedding_scale(config)
        self.embed_positions = build_position_embedding(config)
        self.rotary_emb = RotaryEmbedding(config) if config.positions == "rope" else None
        self.embedding_norm = build_norm(config) if config.embedding_norm else None
        self.layers = nn.ModuleList(
            [
                TransformerLayer(config, i, is_causal=True, has_cross_attention=True)
                for i in range(config.num_decoder_layers)
            ]
        )
        self.norm = build_norm(config) if config.norm_placement == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """Decode, attending to the encoder output.

        Args:
            input_ids: Decoder ids, (batch, tgt_len). Exactly one of it and `inputs_embeds`.
            attention_mask: Decoder padding mask, (batch, past + tgt_len).
            encoder_hidden_states: Encoder output, (batch, src_len, hidden_size).
            encoder_attention_mask: Source padding mask, (batch, src_len).
            cache: An `EncoderDecoderCache` from earlier steps.
            inputs_embeds: Embeddings instead of `input_ids`, (batch, tgt_len, hidden_size).
            use_cache: Return a cache (defaults to `config.use_cache`).
            past_key_values: The cache's name before transformers 5.24; either name works.

        Returns:
            `BaseModelOutputWithPastAndCrossAttentions`; last_hidden_state (batch, tgt_len, hidden).
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError(
                "You must specify exactly one of decoder_input_ids or decoder_inputs_embeds"
            )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = resolve_cache(cache, past_key_values)
        if use_cache and cache is None:
            # No config: the decoder depth may differ from num_hidden_layers; layers come lazily
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

        self_attn_cache = (
            cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        )
        past_seen = self_attn_cache.get_seq_length() if self_attn_cache is not None else 0
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = (position_ids + past_seen).unsqueeze(0)  # (1, tgt_len)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **mask_cache_arg(self_attn_cache),
        )
        encoder_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )

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
            # Encoder states positionally: reentrant checkpointing only tracks gradients of
            # positional tensors, and the encoder must receive its gradient through them
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,
                encoder_attention_mask=encoder_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.norm(hidden_states), **cache_field(cache)
        )


class FinetuneSeq2SeqModel(FinetuneSeq2SeqPreTrainedModel):
    """Encoder and decoder sharing one token embedding table (`shared`)."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: FinetuneSeq2SeqConfig) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.encoder = FinetuneSeq2SeqEncoder(config)
        self.decoder = FinetuneSeq2SeqDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple[torch.Tensor, ...] | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        """Encode the source (unless `encoder_outputs` is given), then decode.

        Args:
            input_ids, attention_mask, inputs_embeds: Source side, see `FinetuneSeq2SeqEncoder`.
            decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds: Target side. When
                neither ids nor embeddings are given, `input_ids` shifted right are used
                (BART's denoising default).
            encoder_outputs: Precomputed encoder output (generation computes it once).
            cache, use_cache, past_key_values: See `FinetuneSeq2SeqDecoder`.

        Returns:
            `Seq2SeqModelOutput`.
        """
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError(
                    "Pass decoder_input_ids or decoder_inputs_embeds (or input_ids to shift right)"
                )
            decoder_input_ids = shift_tokens_right(
                input_ids, self.config.pad_token_id, self.config.decoder_start_token_id
            )

        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )

        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **cache_field(output_cache(decoder_outputs)),
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class FinetuneSeq2SeqForConditionalGeneration(FinetuneSeq2SeqPreTrainedModel, GenerationMixin):
    """The encoder-decoder with a language-modelling head; generates with `generate()`."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.shared.weight"}
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: FinetuneSeq2SeqConfig) -> None:
        super().__init__(config)
        self.model = FinetuneSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # A buffer, as in BART: saved with the weights, never trained
        bias = torch.zeros(1, config.vocab_size) if config.final_logits_bias else None
        self.register_buffer("final_logits_bias", bias)
        self.post_init()

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Resize the shared embeddings, the head and `final_logits_bias` together."""
        embeddings = super().resize_token_embeddings(
            new_num_tokens, pad_to_multiple_of, mean_resizing
        )
        if self.final_logits_bias is not None:
            old = self.final_logits_bias
            new_size = embeddings.weight.shape[0]
            new_bias = old.new_zeros(1, new_size)
            keep = min(new_size, old.shape[-1])
            new_bias[:, :keep] = old[:, :keep]
            self.final_logits_bias = nn.Buffer(new_bias)
        return embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple[torch.Tensor, ...] | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        """Target-token logits, and the loss when `labels` are given.

        Args:
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
            encoder_outputs, cache, inputs_embeds, decoder_inputs_embeds, use_cache,
                past_key_values: As in `FinetuneSeq2SeqModel.forward`.
            labels: Target ids, (batch, tgt_len), -100 where no loss is wanted. Without decoder
                inputs, they are shifted right behind `decoder_start_token_id` to make them.

        Returns:
            `Seq2SeqLMOutput` with `logits` (batch, tgt_len, vocab_size).
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)

        outputs: Seq2SeqModelOutput = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias.to(logits.device)

        loss = None
        if labels is not None:
            # Labels are already aligned with the decoder inputs: no shift inside the loss
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.vocab_size,
                shift_labels=labels,
                **kwargs,
            )
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **cache_field(output_cache(outputs)),
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for `labels`: shifted right behind `decoder_start_token_id`."""
        return shift_tokens_right(
            labels, self.config.pad_token_id, self.config.decoder_start_token_id
        )


__all__ = [
    "FinetuneSeq2SeqForConditionalGeneration",
    "FinetuneSeq2SeqModel",
    "FinetuneSeq2SeqPreTrainedModel",
]
