"""Training methods by name: each turns a base model into the model the optimizer sees."""

from __future__ import annotations

import math
from collections.abc import Callable

from transformers import PreTrainedModel

from finetune.config.schema import FullMethod, LoraMethod, QLoraMethod
from finetune.workarounds import keep_4bit_training_layout

# model.task -> peft's task type (which wrapper class, and what it saves).
PEFT_TASKS = {
    "causal_lm": "CAUSAL_LM",
    "seq2seq": "SEQ_2_SEQ_LM",
    "masked_lm": None,
    "sequence_classification": "SEQ_CLS",  # peft then trains and saves the new head too
}


def _full(
    model: PreTrainedModel, cfg: FullMethod, gradient_checkpointing: bool, task: str
) -> PreTrainedModel:
    model.requires_grad_(True)
    return model


def _lora(
    model: PreTrainedModel, cfg: LoraMethod, gradient_checkpointing: bool, task: str
) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        # The frozen embeddings produce no grad, which checkpointed blocks need at the input.
        model.enable_input_require_grads()
    peft_config = LoraConfig(
        task_type=PEFT_TASKS[task],
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save or None,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        bias=cfg.bias,
    )
    return get_peft_model(model, peft_config)


def _qlora(
    model: PreTrainedModel, cfg: QLoraMethod, gradient_checkpointing: bool, task: str
) -> PreTrainedModel:
    from peft import prepare_model_for_kbit_training

    # Casts norms and the head to fp32 and enables input grads for checkpointing.
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing
    )
    keep_4bit_training_layout(model)
    return _lora(model, cfg, gradient_checkpointing=False, task=task)


METHODS: dict[str, Callable[..., PreTrainedModel]] = {
    "full": _full,
    "lora": _lora,
    "qlora": _qlora,
}


def apply_method(
    model: PreTrainedModel,
    cfg: FullMethod | LoraMethod | QLoraMethod,
    gradient_checkpointing: bool = False,
    task: str = "causal_lm",
) -> PreTrainedModel:
    """Set up `cfg.type` on `model` (built for `task`) and return the model to train."""
    return METHODS[cfg.type](model, cfg, gradient_checkpointing, task)


def parameter_count(param) -> int:
    """Elements of a parameter as the model uses it: 4-bit weights are stored two to a
    byte, so their packed numel is half the real count, and a ZeRO-3 partitioned parameter
    holds no elements outside a forward pass (its full size is `ds_numel`)."""
    if hasattr(param, "ds_numel"):
        return param.ds_numel
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return param.numel()


def trainable_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts, 4-bit weights counted unpacked."""
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(parameter_count(p) for p in model.parameters())
    return trainable, total
