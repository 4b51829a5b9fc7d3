"""The pipeline engine runs behind the Trainer's interface: the same setup and the same
callbacks, firing in the same order at the same steps as in a Trainer run of the config.

Events inside DeepSpeed's `train_batch` and `eval_batch` (micro-steps, the optimizer step,
each prediction step) have no hook in the pipeline engine and are left out of the
comparison; every other event must match, with the same values logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.distributed.helpers import free_port, needs_launcher, run_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed, needs_launcher]

WORKER = REPO / "tests" / "distributed" / "callback_worker.py"
INSIDE_THE_ENGINE = {"on_substep_end", "on_pre_optimizer_step", "on_optimizer_step"}
INSIDE_THE_ENGINE.add("on_prediction_step")


def _trainer_only(key: str) -> bool:
    """Logged by the Trainer only: the gradient norm, which DeepSpeed's engine does not
    compute for a plain torch optimizer without ZeRO, and the time the Trainer took to wrap
    the model for its first evaluation."""
    return key == "grad_norm" or key.endswith("_model_preparation_time")


def _events(config: Path, out: Path, *launcher: str) -> list[list]:
    events = out.parent / "events.json"
    result = subprocess.run(
        [*launcher, str(WORKER), str(config), str(events)],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(events.read_text())


def test_pipeline_fires_the_trainer_callbacks_in_order(tmp_path: Path) -> None:
    # 300 training rows in batches of 100: 3 steps an epoch, so 4 steps cross an epoch;
    # evaluation before training, at step 2 and at the end; checkpoints at steps 2 and 4
    sections = dict(
        data={"eval_ratio": 0.25},
        train={"micro_batch_size": 100, "eval_steps": 2, "eval_untrained": True},
        output={"save_steps": 2},
    )
    single = run_config(tmp_path, "single", 4, **sections)
    pipeline = run_config(tmp_path, "pipeline", 4, distributed={"pipeline_stages": 2}, **sections)
    reference = _events(single, single.parent / "out", sys.executable)
    launcher = ("deepspeed", "--num_gpus", "2", "--master_port", str(free_port()))
    events = _events(pipeline, pipeline.parent / "out", *launcher)

    expected = [event for event in reference if event[0] not in INSIDE_THE_ENGINE]
    assert [e[:2] for e in events] == [e[:2] for e in expected]
    for got, want in zip(events, expected, strict=True):
        if want[0] == "on_log":
            assert set(got[2]) <= set(want[2]), (got, want)
            assert all(_trainer_only(key) for key in set(want[2]) - set(got[2])), (got, want)
    steps = [step for name, step, _ in events if name == "on_save"]
    assert steps == [2, 4]
    checkpoint = pipeline.parent / "out" / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "finetune_complete").is_file()  # sealed by CheckpointMarker
    assert (checkpoint / "model.safetensors").is_file()  # a model beside the engine state
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 4
