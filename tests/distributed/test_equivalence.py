"""Every parallel mode trains the same model as one process.

Same starting checkpoint, data order and global batch (8 rows): one process; ZeRO-2 and
ZeRO-3 on 2 ranks (4 rows each); a 2-stage pipeline and 2-way tensor parallel (8 rows, one
data-parallel rank). All start from one saved random checkpoint because ZeRO-3 builds a
model from scratch partitioned (zero.Init), which draws the same distribution as one
process but not the same numbers. The first losses agree to LOSS_TOL and the exported
models' logits to LOGIT_TOL. The pipeline run also resumes from its checkpoint and ends
where it ended uninterrupted.
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
from tests.distributed.helpers import launch, losses, needs_launcher, run_config, tail

pytestmark = [pytest.mark.slow, pytest.mark.distributed, needs_launcher]

STEPS = 4
LOSS_TOL = 1e-4  # measured: all modes agree to 1e-6 on this machine
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("equivalence")
    start = initial_checkpoint(tmp)
    zero3 = tmp / "zero3.json"
    # The default persistence threshold (1e5) keeps every tensor of this tiny model whole;
    # 0 partitions all of them, which is what is tested.
    zero3.write_text(
        json.dumps(
            {
                "zero_optimization": {
                    "stage": 3,
                    "stage3_param_persistence_threshold": 0,
                    "stage3_gather_16bit_weights_on_model_save": True,
                }
            }
        )
    )
    modes = {
        "zero2": ({"zero_stage": 2}, 4),
        "zero3": ({"deepspeed": str(zero3)}, 4),
        "pipeline": ({"pipeline_stages": 2}, 8),
        "tensor": ({"tensor_parallel": 2}, 8),
    }
    single = run_config(tmp, "single", STEPS, **start)
    result = run_cli("train", str(single))
    assert result.returncode == 0, result.stderr[-3000:]
    outs = {"single": single.parent / "out"}
    for port, (name, (distributed, micro)) in enumerate(modes.items(), start=29741):
        save = {"save_steps": 2} if name == "pipeline" else {}
        config = run_config(
            tmp,
            name,
            STEPS,
            distributed=distributed,
            train={"micro_batch_size": micro},
            output={"dir": str(tmp / name / "out"), **save},
            **start,
        )
        result = launch(config, port)
        assert result.returncode == 0, tail(result)
        outs[name] = config.parent / "out"
    return outs


def initial_checkpoint(tmp: Path) -> dict:
    """Save the tiny model with random weights and its tokenizer; return config sections
    that start from it."""
    from finetune.config.schema import RunConfig
    from finetune.methods import load_base_model
    from finetune.train.runner import _build_tokenizer
    from tests.conftest import tiny_config

    cfg = RunConfig.model_validate(tiny_config(tmp))
    tokenizer = _build_tokenizer(cfg)
    torch.manual_seed(0)
    model = load_base_model(cfg.model, tokenizer)
    path = tmp / "initial"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return {
        "model": {"name_or_path": str(path), "architecture": None, "config": {}},
        "tokenizer": {"train": None},
    }


def test_losses_match_single_process(runs: dict[str, Path]) -> None:
    reference = losses(runs["single"])[:STEPS]
    assert len(reference) == STEPS
    assert reference[-1] < reference[0] - 0.5  # it learns
    for name, out in runs.items():
        assert losses(out)[:STEPS] == pytest.approx(reference, abs=LOSS_TOL), name


def test_engines_and_world_sizes(runs: dict[str, Path]) -> None:
    info = {name: json.loads((out / "run_info.json").read_text()) for name, out in runs.items()}
    assert info["zero3"]["engine"] == "DeepSpeedEngine"
    assert info["pipeline"]["engine"] == "PipelineEngine"
    assert info["tensor"]["world_size"] == 2
    assert all(i["global_step"] == STEPS for i in info.values())
    assert len(info["zero2"]["peak_memory_mb_per_rank"]) == 2


def test_exported_models_give_the_same_logits(runs: dict[str, Path]) -> None:
    ids = torch.arange(3, 40).reshape(1, -1)
    logits = {}
    for name, out in runs.items():
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            logits[name] = model(ids).logits
    for name, value in logits.items():
        torch.testing.assert_close(value, logits["single"], atol=LOGIT_TOL, rtol=0, msg=name)


def test_pipeline_resumes_to_the_same_end(runs: dict[str, Path], tmp_path: Path) -> None:
    source = runs["pipeline"]
    resumed = tmp_path / "resumed"
    shutil.copytree(source, resumed)
    (resumed / "metrics.jsonl").unlink()
    for done in (resumed / "checkpoints").glob("checkpoint-4"):
        shutil.rmtree(done)  # resume from step 2
    config = source.parent / "run.yaml"
    result = launch(config, 29749, 2, "--resume", "--set", f"output.dir={resumed}")
    assert result.returncode == 0, tail(result)
    assert losses(resumed) == pytest.approx(losses(source)[2:], abs=LOSS_TOL)
    a = AutoModelForCausalLM.from_pretrained(source).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
