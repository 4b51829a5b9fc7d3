"""Load the base model and set up the training method (full, LoRA) on it."""

from finetune.methods.base import load_base_model
from finetune.methods.registry import apply_method, trainable_parameters

__all__ = ["apply_method", "load_base_model", "trainable_parameters"]
