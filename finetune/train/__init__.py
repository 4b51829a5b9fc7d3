"""Training loops, callbacks, checkpoints and resume."""

from finetune.train.runner import train

__all__ = ["train"]
