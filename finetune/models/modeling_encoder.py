"""Encoder-only transformer (bidirectional) with masked-LM and sequence-classification heads.

Configured as BERT (learned positions, token types, embedding LayerNorm, post-norm, gelu,
pooler, MLM head transform) it computes the same function as transformers' BERT, whose
checkpoints `finetune.models.convert` turns into this model; the defaults give a modern
pre-norm encoder with rotary positions.
"""

from typing import ClassVar

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import (
    create_bidirectional_mask,
    find_packed_sequence_indices,
    packed_sequence_mask_function,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_encoder import FinetuneEncoderConfig
from .layers import (
    FFN_ACTIVATIONS,
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


class FinetuneEncoderPreTrainedModel(PreTrainedModel):
    """Weight initialisation and capability flags of the encoder family."""

    config: FinetuneEncoderConfig
    config_class = FinetuneEncoderConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["TransformerLayer"]
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


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh over the first token, (batch, seq, hidden) -> (batch, hidden)."""

    def __init__(self, config: FinetuneEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class MaskedLMHeadTransform(nn.Module):
    """BERT's prediction-head transform: dense + activation + norm, before the vocab projection."""

    def __init__(self, config: FinetuneEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act_fn = ACT2FN[FFN_ACTIVATIONS[config.ffn]]
        self.norm = build_norm(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act_fn(self.dense(hidden_states)))


class FinetuneEncoderModel(FinetuneEncoderPreTrainedModel):
    """The encoder stack: embeddings, `num_hidden_layers` bidirectional blocks, optional pooler."""

    def __init__(self, config: FinetuneEncoderConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_scale = embedding_scale(config)
        self.embed_positions = build_position_embedding(config)
        self.token_type_embeddings = None
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config) if config.positions == "rope" else None
        self.embedding_norm = build_norm(config) if config.embedding_norm else None
        self.layers = nn.ModuleList(
            [TransformerLayer(config, i, is_causal=False) for i in range(config.num_hidden_layers)]
        )
        self.norm = build_norm(config) if config.norm_placement == "pre" else nn.Identity()
        # A head that reads every token (masked LM) builds none: an unused pooler gets no
        # gradient, which DDP with find_unused_parameters=False refuses (as BERT's MLM does)
        self.pooler = Pooler(config) if config.add_pooler and add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Run the stack.

        Args:
            input_ids: Token ids, (batch, seq). Exactly one of `input_ids` and `inputs_embeds`.
            attention_mask: 1 for real tokens, 0 for padding, (batch, seq).
            token_type_ids: Segment ids, (batch, seq); zeros when omitted.
            position_ids: (batch, seq). Positions restarting at 0 inside a row mark packed
                samples, which then do not attend to each other (when `attention_mask` is None).
            inputs_embeds: Token embeddings instead of `input_ids`, (batch, seq, hidden_size).

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` (batch, seq, hidden_size) and
            `pooler_output` (batch, hidden_size) when the config has a pooler.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        batch_size, seq_len = inputs_embeds.shape[:2]
        packed_mask_function = None
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=inputs_embeds.device).unsqueeze(0)
        elif attention_mask is None:
            # Bidirectional masks do not detect packing by themselves: add the boundary rule
            packed = find_packed_sequence_indices(position_ids.expand(batch_size, -1))
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
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(
                    (batch_size, seq_len), dtype=torch.long, device=inputs_embeds.device
                )
            hidden_states = hidden_states + self.token_type_embeddings(token_type_ids)
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
                position_ids=position_ids,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class FinetuneEncoderForMaskedLM(FinetuneEncoderPreTrainedModel):
    """The encoder with a masked-language-modelling head."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: FinetuneEncoderConfig) -> None:
        super().__init__(config)
        self.model = FinetuneEncoderModel(config, add_pooling_layer=False)
        self.head_transform = MaskedLMHeadTransform(config) if config.mlm_head_transform else None
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.mlm_head_bias)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        """Token logits, and the loss when `labels` are given.

        Args:
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds:
                As in `FinetuneEncoderModel.forward`.
            labels: Original ids at masked positions, -100 elsewhere, (batch, seq).

        Returns:
            `MaskedLMOutput` with `logits` (batch, seq, vocab_size).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if self.head_transform is not None:
            hidden_states = self.head_transform(hidden_states)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return MaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class FinetuneEncoderForSequenceClassification(FinetuneEncoderPreTrainedModel):
    """The encoder with a classification (or regression) head over the whole sequence."""

    def __init__(self, config: FinetuneEncoderConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = FinetuneEncoderModel(config)
        self.classifier_dropout = (
            config.classifier_dropout
            if config.classifier_dropout is not None
            else config.hidden_dropout
        )
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        """Sequence logits, and the loss when `labels` are given.

        Args:
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds:
                As in `FinetuneEncoderModel.forward`.
            labels: Class ids (batch,), or float targets for regression / multi-label.

        Returns:
            `SequenceClassifierOutput` with `logits` (batch, num_labels).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        pooled = self._pool(outputs, attention_mask)
        logits = self.classifier(dropout(pooled, self.classifier_dropout, self.training))

        loss = None
        if labels is not None:
            loss = self.loss_function(
                labels=labels, pooled_logits=logits, config=self.config, **kwargs
            )
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _pool(
        self, outputs: BaseModelOutputWithPooling, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One vector per sequence, (batch, hidden_size): pooler, first token or masked mean."""
        if outputs.pooler_output is not None:
            return outputs.pooler_output
        hidden_states = outputs.last_hidden_state  # (batch, seq, hidden_size)
        if self.config.classifier_pooling == "cls":
            return hidden_states[:, 0]
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # (batch, seq, 1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


__all__ = [
    "FinetuneEncoderForMaskedLM",
    "FinetuneEncoderForSequenceClassification",
    "FinetuneEncoderModel",
    "FinetuneEncoderPreTrainedModel",
]
