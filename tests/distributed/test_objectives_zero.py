"""DPO and a reward model under DeepSpeed ZeRO-2 and ZeRO-3 on 2 ranks train the same steps
as one process.

Same starting checkpoints (saved, so that ZeRO-3's partitioned construction draws nothing),
the same pairs in the same order and the same global batch (8 pairs: 4 per rank). DPO runs
with full training, so its reference is a frozen copy that ZeRO-3 partitions too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import REPO, run_cli
from tests.distributed.helpers import (
    free_port,
    initial_checkpoint,
    launch,
    losses,
    needs_launcher,
    run_config,
    tail,
    zero3_file,
)

pytestmark = [pytest.mark.slow, pytest.mark.distributed, needs_launcher]

STEPS = 3
LOSS_TOL = 1e-4
PAIRS = REPO / "finetune" / "resources" / "arithmetic" / "preference_train.jsonl"


def _reward_checkpoint(start: dict, tmp: Path) -> dict:
    """The starting checkpoint with its one-output head saved too (a new head drawn under
    ZeRO-3's partitioned construction would get other numbers than in one process)."""
    source = start["model"]["name_or_path"]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.config.pad_token_id = model.config.eos_token_id
    path = tmp / "initial-reward"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return {**start, "model": {**start["model"], "name_or_path": str(path)}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("objectives")
    start = initial_checkpoint(tmp)
    starts = {"dpo": start, "reward": _reward_checkpoint(start, tmp)}
    zero3 = zero3_file(tmp)
    data = {"train": [{"path": str(PAIRS), "format": "preference", "samples": 64}]}
    outs = {}
    for objective, begin in starts.items():
        modes = {
            "single": (None, 8),
            "zero2": ({"zero_stage": 2}, 4),
            "zero3": ({"deepspeed": str(zero3)}, 4),
        }
        for mode, (distributed, batch) in modes.items():
            name = f"{objective}-{mode}"
            sections = {
                **begin,
                "data": data,
                "objective": {"type": objective},
                "train": {"micro_batch_size": batch, "lr": 1e-3},
                "output": {"dir": str(tmp / name / "out")},
            }
            if distributed is not None:
                sections["distributed"] = distributed
            config = run_config(tmp, name, STEPS, **sections)
            if distributed is None:
                result = run_cli("train", str(config))
            else:
                result = launch(config, free_port(), 2)
            assert result.returncode == 0, tail(result)
            outs[name] = config.parent / "out"
    return outs


@pytest.mark.parametrize("objective", ["dpo", "reward"])
def test_zero_steps_match_one_process(runs: dict[str, Path], objective: str) -> None:
    reference = losses(runs[f"{objective}-single"])
    assert len(reference) == STEPS
    if objective == "dpo":  # the policy starts as its reference: the first loss is ln 2
        assert reference[0] == pytest.approx(0.6931, abs=1e-4)
    for mode in ("zero2", "zero3"):
        out = runs[f"{objective}-{mode}"]
        assert losses(out) == pytest.approx(reference, abs=LOSS_TOL), mode
        info = json.loads((out / "run_info.json").read_text())
        assert info["world_size"] == 2 and info["engine"] == "DeepSpeedEngine"
