"""Stop a run whose loss or gradients become NaN or infinite, before the weights are saved.

transformers' Trainer logs a NaN loss as the running average (`logging_nan_inf_filter`) and
keeps stepping, so a diverged run used to exit 0 with an all-NaN model. The gradient norm is
checked instead of each rank's loss: a non-finite loss anywhere makes the reduced gradients
non-finite on every rank, so all ranks stop at the same step and none waits on the others.
"""

from __future__ import annotations

import math

import torch
from transformers import Trainer, TrainerCallback

from finetune.errors import TrainingDiverged
from finetune.workarounds import without_tied_keys


def diverged(step: int, what: str, value: float) -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged at step {step}: the {what} is {value}. Nothing from this step was "
        "saved; earlier complete checkpoints are kept. Lower train.lr, raise "
        "train.warmup_steps or set train.max_grad_norm, then start again (or --resume from "
        "a checkpoint before the divergence)"
    )


def gradient_norm(model: torch.nn.Module) -> float:
    """The total 2-norm of the gradients held in `.grad` (0.0 when none are)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0).item()


class DivergenceGuard(TrainerCallback):
    """Raise `TrainingDiverged` before the optimizer applies non-finite gradients.

    Under DeepSpeed the engine keeps the gradients and steps inside the backward pass, so
    `GuardedTrainer` reads the engine's own norm there instead.
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        if model is None or args.deepspeed:
            return
        norm = gradient_norm(model)
        if not math.isfinite(norm):
            raise diverged(state.global_step + 1, "gradient norm", norm)


class Guarded:
    """Mixed into a Trainer class (transformers' or TRL's): stop on a non-finite DeepSpeed
    gradient norm, and do not warn of tied weights as missing on resume."""

    def _issue_warnings_after_load(self, load_result) -> None:
        if hasattr(load_result, "_replace"):  # torch's _IncompatibleKeys
            missing = without_tied_keys(self.model, list(load_result.missing_keys))
            load_result = load_result._replace(missing_keys=missing)
        super()._issue_warnings_after_load(load_result)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.is_deepspeed_enabled:
            norm = self.model_wrapped.get_global_grad_norm()
            norm = float(norm) if norm is not None else 0.0
            if not math.isfinite(norm):
                raise diverged(self.state.global_step + 1, "gradient norm", norm)
        return loss


class GuardedTrainer(Guarded, Trainer):
    """transformers' Trainer with the `Guarded` checks."""
