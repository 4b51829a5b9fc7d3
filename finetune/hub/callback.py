"""The Trainer callback that pushes each checkpoint (`hub.strategy: every_save`)."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.config.hub import HubConfig
from finetune.hub.errors import HubError
from finetune.hub.upload import push

if TYPE_CHECKING:
    from transformers import TrainerCallback


logger = logging.getLogger(__name__)


def hub_callbacks(hub: HubConfig, out: Path) -> list[TrainerCallback]:
    """Trainer callbacks for `hub.strategy: every_save` (none otherwise)."""
    if not (hub.push_to_hub and hub.strategy == "every_save"):
        return []
    return [_checkpoint_pusher_class()(hub, out)]


@cache
def _checkpoint_pusher_class() -> type:
    # Built on first use: importing transformers' Trainer loads torch, which `finetune push`
    # does not need.
    from transformers import TrainerCallback

    class CheckpointPusher(TrainerCallback):
        """Push each saved checkpoint's model (no optimizer state) to the Hub, on rank 0."""

        def __init__(self, hub: HubConfig, out: Path) -> None:
            self.hub, self.out = hub, out

        def on_save(self, args, state, control, **kwargs) -> None:
            if not state.is_world_process_zero:
                return
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            step = state.global_step
            try:
                push(
                    checkpoint,
                    self.hub,
                    run_dir=self.out,
                    commit_message=f"Training in progress, step {step}",
                    step=step,
                )
            except HubError as err:
                logger.warning("checkpoint %d was not pushed, training goes on: %s", step, err)
            except Exception:  # an upload problem must not end a long run
                logger.exception("checkpoint %d was not pushed, training goes on", step)

    return CheckpointPusher
