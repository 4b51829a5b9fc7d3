"""Every parallel mode trains the same model as one process.

Same starting checkpoint, data order and global batch (8 rows): one process; ZeRO-2 and
ZeRO-3 on 2 ranks (4 rows each); a 2-stage pipeline (2 micro-batches of 4 rows) and 2-way
tensor parallel (8 rows), one data-parallel rank each; and both again with 2 data-parallel
ranks on 4 ranks (pipeline x data with ZeRO-1, tensor x data with ZeRO-2). All start from
one saved random checkpoint because ZeRO-3 builds a model from scratch partitioned
(zero.Init), which draws the same distribution as one process but not the same numbers.
The first losses agree to LOSS_TOL and the exported models' logits to LOGIT_TOL. The ZeRO-3
and pipeline runs also resume from their step-2 checkpoints and end where they ended
uninterrupted.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import run_cli
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

STEPS = 4
LOSS_TOL = 1e-4  # measured: all modes agree to 1e-6 on this machine
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("equivalence")
    start = initial_checkpoint(tmp)
    zero3 = zero3_file(tmp)
    # name: (distributed section, train section, ranks)
    modes = {
        "zero2": ({"zero_stage": 2}, {"micro_batch_size": 4}, 2),
        "zero3": ({"deepspeed": str(zero3)}, {"micro_batch_size": 4}, 2),
        "pipeline": (
            {"pipeline_stages": 2},
            {"micro_batch_size": 4, "gradient_accumulation_steps": 2},
            2,
        ),
        "tensor": ({"tensor_parallel": 2}, {"micro_batch_size": 8}, 2),
        "pipeline_x_data": (
            {"pipeline_stages": 2, "zero_stage": 1},
            {"micro_batch_size": 4},
            4,
        ),
        "tensor_x_data": ({"tensor_parallel": 2, "zero_stage": 2}, {"micro_batch_size": 4}, 4),
    }
    single = run_config(tmp, "single", STEPS, **start)
    result = run_cli("train", str(single))
    assert result.returncode == 0, result.stderr[-3000:]
    outs = {"single": single.parent / "out"}
    for name, (distributed, train, ranks) in modes.items():
        config = run_config(
            tmp,
            name,
            STEPS,
            distributed=distributed,
            train=train,
            output={"dir": str(tmp / name / "out"), "save_steps": 2},
            **start,
        )
        result = launch(config, free_port(), ranks)
        assert result.returncode == 0, tail(result)
        outs[name] = config.parent / "out"
    return outs


def test_losses_match_single_process(runs: dict[str, Path]) -> None:
    reference = losses(runs["single"])[:STEPS]
    assert len(reference) == STEPS
    assert reference[-1] < reference[0] - 0.5  # it learns
    for name, out in runs.items():
        assert losses(out)[:STEPS] == pytest.approx(reference, abs=LOSS_TOL), name


def test_every_mode_logs_the_same_schedule(runs: dict[str, Path]) -> None:
    def rates(out: Path) -> list[float]:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [row["learning_rate"] for row in rows if "loss" in row]

    reference = rates(runs["single"])
    assert len(reference) == STEPS
    for name, out in runs.items():
        assert rates(out) == pytest.approx(reference, rel=1e-9), name


def test_engines_and_world_sizes(runs: dict[str, Path]) -> None:
    info = {name: json.loads((out / "run_info.json").read_text()) for name, out in runs.items()}
    assert info["zero3"]["engine"] == "DeepSpeedEngine"
    assert info["pipeline"]["engine"] == "PipelineEngine"
    assert info["pipeline_x_data"]["engine"] == "PipelineEngine"
    assert info["tensor"]["world_size"] == 2
    assert info["pipeline_x_data"]["world_size"] == info["tensor_x_data"]["world_size"] == 4
    assert all(i["global_step"] == STEPS for i in info.values())
    assert len(info["zero2"]["peak_memory_mb_per_rank"]) == 2


def test_zero3_partitions_the_weights(runs: dict[str, Path]) -> None:
    """During training no rank holds a whole parameter: each holds its shards only."""
    info = json.loads((runs["zero3"] / "run_info.json").read_text())
    held = info["parameters_held_per_rank"]
    assert [rank["numel"] for rank in held] == [0, 0]
    shards = [rank["shard_numel"] for rank in held]
    assert min(shards) > 0
    total = info["total_parameters"]
    assert total <= sum(shards) < total + len(held) * 64  # shards are padded
    single = json.loads((runs["single"] / "run_info.json").read_text())
    assert single["parameters_held_per_rank"][0]["numel"] == total


def test_exported_models_give_the_same_logits(runs: dict[str, Path]) -> None:
    ids = torch.arange(3, 40).reshape(1, -1)
    logits = {}
    for name, out in runs.items():
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            logits[name] = model(ids).logits
    for name, value in logits.items():
        torch.testing.assert_close(value, logits["single"], atol=LOGIT_TOL, rtol=0, msg=name)


@pytest.mark.parametrize("mode", ["zero3", "pipeline"])
def test_resume_ends_where_the_uninterrupted_run_ended(
    runs: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    """The run as a kill after its step-2 checkpoint leaves it, resumed with --resume."""
    source = runs[mode]
    resumed = tmp_path / "resumed"
    shutil.copytree(source, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    for written_at_the_end in ("metrics.jsonl", "run_info.json", "model.safetensors"):
        (resumed / written_at_the_end).unlink()
    config = source.parent / "run.yaml"
    result = launch(config, free_port(), 2, "--resume", "--set", f"output.dir={resumed}")
    assert result.returncode == 0, tail(result)
    assert losses(resumed) == pytest.approx(losses(source)[2:], abs=LOSS_TOL)
    a = AutoModelForCausalLM.from_pretrained(source).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
