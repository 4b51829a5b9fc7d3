"""Training methods by name: each turns a base model into the model the optimizer sees."""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedModel

from finetune.config.schema import FullMethod, LoraMethod


def _full(model: PreTrainedModel, cfg: FullMethod) -> PreTrainedModel:
    model.requires_grad_(True)
    return model


def _lora(model: PreTrainedModel, cfg: LoraMethod) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
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


METHODS: dict[str, Callable] = {"full": _full, "lora": _lora}


def apply_method(model: PreTrainedModel, cfg: FullMethod | LoraMethod) -> PreTrainedModel:
    """Set up `cfg.type` on `model` and return the model to train."""
    return METHODS[cfg.type](model, cfg)


def trainable_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
