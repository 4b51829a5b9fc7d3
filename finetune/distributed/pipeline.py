"""A DeepSpeed PipelineModule cut from a Hugging Face causal LM, following its pp plan.

The cut is read from the model's pp plans (transformers' convention, which Llama and the
project's `decoder` declare): the config's `base_model_pp_plan` names the base model's
embedding, layer list and final norm, in order, and the model's `_pp_plan` its head.
Each piece becomes one pipeline layer that takes and returns a tuple of tensors
`(hidden_states, attention_mask)`; the causal mask and rotary embeddings are rebuilt on every
layer from the padding mask, so nothing but those two tensors crosses a stage boundary.

The layers wrap the model's own modules (no weights are copied), so after training the
Hugging Face model object on each rank holds its stage's trained weights, ready to save.
Tied input/output embeddings become a DeepSpeed `TiedLayerSpec`: the first and last stages
each hold the matrix and DeepSpeed all-reduces its gradient between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from finetune.errors import ConfigError
from finetune.models.compat import mask_cache_arg
from finetune.workarounds import mark_stage_parameters

TIED_KEY = "embed_tokens"
Activations = tuple[torch.Tensor, torch.Tensor]  # (hidden_states, attention_mask)


class EmbeddingPipe(nn.Module):
    """First layer: token ids to embeddings; also the tied output projection."""

    def __init__(self, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, inputs: Activations) -> Activations:
        input_ids, attention_mask = inputs  # (batch, seq) each
        return self.embed_tokens(input_ids), attention_mask  # (batch, seq, hidden)


def tied_head_forward(module: EmbeddingPipe, inputs: Activations) -> torch.Tensor:
    """The output projection through the tied embedding matrix: (batch, seq, vocab)."""
    hidden_states, _ = inputs
    return nn.functional.linear(hidden_states, module.embed_tokens.weight)


class DecoderLayerPipe(nn.Module):
    """One decoder layer, rebuilding its causal mask and rotary embeddings from the padding
    mask (right padding: positions are 0..seq-1)."""

    def __init__(self, layer: nn.Module, rotary_emb: nn.Module | None, config) -> None:
        super().__init__()
        self.layer = layer
        self.rotary_emb = rotary_emb
        self.config = config

    def forward(self, inputs: Activations) -> Activations:
        hidden_states, attention_mask = inputs
        seq = hidden_states.shape[1]
        position_ids = torch.arange(seq, device=hidden_states.device).unsqueeze(0)  # (1, seq)
        mask_fn = (
            create_sliding_window_causal_mask
            if getattr(self.config, "sliding_window", None)
            else create_causal_mask
        )
        causal_mask = mask_fn(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **mask_cache_arg(None),
        )
        position_embeddings = None
        if self.rotary_emb is not None:
            position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        hidden_states = self.layer(
            hidden_states,
            attention_mask=causal_mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            use_cache=False,
        )
        return hidden_states, attention_mask


class NormPipe(nn.Module):
    """The final norm."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, inputs: Activations) -> Activations:
        hidden_states, attention_mask = inputs
        return self.norm(hidden_states), attention_mask


class HeadPipe(nn.Module):
    """An untied output projection: (batch, seq, vocab) logits."""

    def __init__(self, lm_head: nn.Linear) -> None:
        super().__init__()
        self.lm_head = lm_head

    def forward(self, inputs: Activations) -> torch.Tensor:
        return self.lm_head(inputs[0])


@dataclass(frozen=True)
class PipelineStack:
    """The modules a pipeline is cut from, found through the model's pp plans."""

    base: nn.Module
    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear


def pp_stack(model: PreTrainedModel) -> PipelineStack:
    """The embedding -> layers -> norm -> head stack that `base_model_pp_plan` (on the config)
    and `_pp_plan` (on the model) declare.

    Raises:
        ConfigError: the model declares no such plan, or its modules do not match it.
    """
    plan = list(getattr(model.config, "base_model_pp_plan", None) or {})
    # The model's own entries (after post_init transformers adds the base's, prefixed)
    head_plan = [name for name in getattr(model, "_pp_plan", None) or {} if "." not in name]
    base = getattr(model, model.base_model_prefix, None)
    modules = [getattr(base, name, None) for name in plan] if base is not None else []
    head = getattr(model, head_plan[0], None) if len(head_plan) == 1 else None
    if (
        len(plan) != 3
        or not isinstance(modules[0], nn.Embedding)
        or not isinstance(modules[1], nn.ModuleList)
        or modules[2] is None
        or not isinstance(head, nn.Linear)
    ):
        declared = " -> ".join([*plan, *head_plan]) or "none"
        raise ConfigError(
            f"distributed.pipeline_stages: {type(model).__name__} declares no pipeline plan of "
            f"an embedding, a layer list and a norm, then a head (its pp plan: {declared}); "
            "use zero_stage or tensor_parallel for this model"
        )
    return PipelineStack(base, modules[0], modules[1], modules[2], head)


def check_pipeline_model(model: PreTrainedModel, stages: int) -> PipelineStack:
    """The model's pipeline stack, after checking it can be cut into `stages` stages.

    Raises:
        ConfigError: the model has no pp plan stack, fewer layers than stages, or an
            embedding step the pipeline would skip.
    """
    stack = pp_stack(model)
    base = stack.base
    extras = [n for n in ("embed_positions", "embedding_norm") if getattr(base, n, None)]
    if getattr(base, "embed_scale", 1.0) not in (None, 1.0):
        extras.append("scale_embeddings")
    if getattr(model.config, "hidden_dropout", 0.0):
        extras.append("hidden_dropout")
    if extras:
        raise ConfigError(
            f"model.config: the pipeline embeds tokens with the token embedding alone, but "
            f"this model also uses {', '.join(extras)}; use rotary positions without them, "
            "or zero_stage/tensor_parallel instead of distributed.pipeline_stages"
        )
    if len(stack.layers) + 2 < stages:
        raise ConfigError(
            f"distributed.pipeline_stages: {stages} stages for a model of "
            f"{len(stack.layers)} layers; use at most {len(stack.layers)}"
        )
    return stack


def pipeline_module(model: PreTrainedModel, stages: int, loss_fn, partition_method: str):
    """A `deepspeed.pipe.PipelineModule` over `model`'s own modules."""
    from deepspeed.pipe import PipelineModule, TiedLayerSpec

    stack = check_pipeline_model(model, stages)
    rotary = getattr(stack.base, "rotary_emb", None)
    layers: list = [DecoderLayerPipe(layer, rotary, model.config) for layer in stack.layers]
    if stack.lm_head.weight is stack.embed_tokens.weight:
        attr = ["embed_tokens.weight"]  # EmbeddingPipe's own attribute
        embed = TiedLayerSpec(TIED_KEY, EmbeddingPipe, stack.embed_tokens, tied_weight_attr=attr)
        head = TiedLayerSpec(
            TIED_KEY,
            EmbeddingPipe,
            stack.embed_tokens,
            forward_fn=tied_head_forward,
            tied_weight_attr=attr,
        )
    else:
        embed, head = EmbeddingPipe(stack.embed_tokens), HeadPipe(stack.lm_head)
    module = PipelineModule(
        layers=[embed, *layers, NormPipe(stack.norm), head],
        num_stages=stages,
        loss_fn=loss_fn,
        partition_method=partition_method,
        dynamic_shape=True,  # padded to the longest row of each batch: shapes vary
    )
    mark_stage_parameters(module)
    return module
