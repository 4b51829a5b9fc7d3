"""The distributed section: schema, DeepSpeed config, presets, preflight, estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from finetune.config.schema import DistributedConfig, RunConfig, TrainConfig
from finetune.distributed.checks import check_distributed
from finetune.distributed.deepspeed import deepspeed_config, resolve_batch_values, zero_preset
from finetune.distributed.estimate import (
    estimate_stages,
    format_estimate,
    meta_model,
    parameter_counts,
)
from finetune.errors import ConfigError, PreflightError
from tests.conftest import REPO, tiny_config

PRESETS = sorted((REPO / "configs" / "deepspeed").glob("*.json"))


def run_config(tmp_path: Path, **distributed) -> RunConfig:
    return RunConfig.model_validate(tiny_config(tmp_path, distributed=distributed))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_load_through_the_deepspeed_field(path: Path) -> None:
    cfg = DistributedConfig(deepspeed=str(path))
    ds = deepspeed_config(cfg, TrainConfig())
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    stage = ds["zero_optimization"]["stage"]
    if stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    offload = "cpu" if "offload" in path.stem else "none"
    assert (offload == "cpu") == ("offload_optimizer" in ds["zero_optimization"])
    # zero_stage: N takes the same file
    preset = deepspeed_config(DistributedConfig(zero_stage=stage), TrainConfig())
    if offload == "none":
        assert preset == ds
    assert zero_preset(stage, offload) == json.loads(path.read_text())


def test_presets_cover_every_stage() -> None:
    assert {p.stem for p in PRESETS} >= {f"zero{s}" for s in range(4)} | {
        f"zero{s}_offload" for s in (1, 2, 3)
    }


def test_offload_and_tensor_parallel_are_written() -> None:
    cfg = DistributedConfig(zero_stage=3, offload={"optimizer": "cpu", "params": "cpu"})
    zero = deepspeed_config(cfg, TrainConfig())["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    ds = deepspeed_config(DistributedConfig(tensor_parallel=2), TrainConfig())
    assert ds["tensor_parallel"] == {"autotp_size": 2}
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_file_contradicting_the_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps({"zero_optimization": {"stage": 1}, "tensor_parallel": {"autotp_size": 4}})
    )
    with pytest.raises(ConfigError, match="tensor_parallel=4"):
        deepspeed_config(DistributedConfig(deepspeed=str(path), tensor_parallel=2), TrainConfig())
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"offload\.params"):
        deepspeed_config(
            DistributedConfig(deepspeed=str(path), offload={"params": "cpu"}), TrainConfig()
        )


def test_zero3_file_gathers_weights_for_the_final_model(tmp_path: Path) -> None:
    """A ZeRO-3 file without the gather flag still saves a Hugging Face model; a file
    that turns it off is refused (the final save would be DeepSpeed shards only)."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    ds = deepspeed_config(DistributedConfig(deepspeed=str(path)), TrainConfig())
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    zero = {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}
    path.write_text(json.dumps({"zero_optimization": zero}))
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        deepspeed_config(DistributedConfig(deepspeed=str(path)), TrainConfig())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"offload": {"optimizer": "cpu"}}, "needs DeepSpeed ZeRO"),
        ({"zero_stage": 2, "offload": {"params": "cpu"}}, "ZeRO-3 only"),
        ({"zero_stage": 0, "offload": {"optimizer": "cpu"}}, "stage 0 does not offload"),
        ({"zero_stage": 3, "offload": {"optimizer": "nvme"}}, "nvme_path"),
        ({"pipeline_stages": 2, "tensor_parallel": 2}, "cannot be combined"),
        ({"pipeline_stages": 0}, "pipeline_stages"),
        ({"extra": 1}, "extra"),
    ],
)
def test_schema_refuses(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistributedConfig(**fields)


def test_resolve_batch_values_fills_auto() -> None:
    ds = deepspeed_config(DistributedConfig(pipeline_stages=2), TrainConfig(micro_batch_size=4))
    resolved = resolve_batch_values(ds, TrainConfig(micro_batch_size=4), data_parallel=3)
    assert resolved["train_batch_size"] == 12
    assert "auto" not in json.dumps(resolved)


@pytest.mark.parametrize(
    ("fields", "sections", "world", "message"),
    [
        ({"tensor_parallel": 2}, {}, 3, "world size 3 is not data x tensor x pipeline"),
        ({"pipeline_stages": 2}, {}, 1, "must divide it"),
        ({"pipeline_stages": 2, "zero_stage": 2}, {}, 2, "refuses ZeRO stage 2"),
        ({"pipeline_stages": 2}, {"data": {"packing": True}}, 2, "data.packing"),
        ({"pipeline_stages": 2}, {"method": {"type": "lora"}}, 2, "method.type"),
        (
            {"pipeline_stages": 2},
            {
                "train": {"exact_match_rows": 4},
                "data": {"eval": [{"path": "eval.jsonl", "format": {"type": "completion"}}]},
            },
            2,
            "finetune eval",
        ),
        ({"tensor_parallel": 2, "zero_stage": 3}, {}, 2, "stages 0-2, not 3"),
        ({"tensor_parallel": 2}, {"method": {"type": "lora"}}, 2, "AutoTP"),
        (
            {"zero_stage": 2, "offload": {"optimizer": "cpu"}},
            {"train": {"optimizer": "adamw_8bit"}},
            2,
            "cannot be offloaded",
        ),
        (
            {"zero_stage": 3, "offload": {"params": "nvme", "nvme_path": "/nonexistent"}},
            {},
            2,
            "not a directory",
        ),
    ],
)
def test_preflight_refuses(
    tmp_path: Path, fields: dict, sections: dict, world: int, message: str
) -> None:
    raw = tiny_config(tmp_path, distributed=fields)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    with pytest.raises(PreflightError, match=message):
        check_distributed(RunConfig.model_validate(raw), world_size=world)


def test_preflight_accepts_valid_layouts(tmp_path: Path) -> None:
    check_distributed(run_config(tmp_path, zero_stage=3), world_size=2)
    check_distributed(run_config(tmp_path, tensor_parallel=2), world_size=4)
    check_distributed(run_config(tmp_path, pipeline_stages=2, zero_stage=1), world_size=2)


@pytest.mark.parametrize("source", ["schema", "json"])
def test_nvme_offload_needs_async_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    if source == "schema":
        fields = {"zero_stage": 3, "offload": {"params": "nvme", "nvme_path": str(tmp_path)}}
    else:  # the user's DeepSpeed file asks for NVMe itself
        ds = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}
        (tmp_path / "ds.json").write_text(json.dumps(ds))
        fields = {"deepspeed": str(tmp_path / "ds.json")}
    cfg = run_config(tmp_path, **fields)
    monkeypatch.setattr("finetune.distributed.checks.async_io_available", lambda: False)
    with pytest.raises(PreflightError, match="libaio"):
        check_distributed(cfg, world_size=2)
    monkeypatch.setattr("finetune.distributed.checks.async_io_available", lambda: True)
    check_distributed(cfg, world_size=2)


def test_estimate_uses_deepspeed_estimators(tmp_path: Path) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    model = meta_model(run_config(tmp_path))
    total, largest = parameter_counts(model)
    assert total == 112_448  # 2 layers, hidden 64, vocabulary 300 (untied head)
    assert largest == 300 * 64
    rows = {(r.stage, r.offload): r for r in estimate_stages(total, largest, 4, 2)}
    _, gpu2 = estimate_zero2_model_states_mem_needs(total, 4, 2, cpu_offload=False)
    _, gpu3, _ = estimate_zero3_model_states_mem_needs(total, largest, 4, 2, False, False)
    assert rows[2, "none"].gpu_per_rank == gpu2
    assert rows[3, "none"].gpu_per_rank == gpu3
    assert rows[3, "none"].gpu_per_node == 4 * gpu3
    per_gpu = [rows[s, "none"].gpu_per_rank for s in range(4)]
    assert per_gpu == sorted(per_gpu, reverse=True)  # each stage shards more


def test_estimate_says_which_stage_fits() -> None:
    total = 7_000_000_000  # a 7B model on 8 x 40 GB
    rows = estimate_stages(total, 500_000_000, 8, 1)
    text = format_estimate(total, 500_000_000, rows, 40)
    assert "lowest stage that fits 40 GB per GPU: ZeRO-2" in text
    assert "no ZeRO stage fits" in format_estimate(
        total, 2 * 10**9, estimate_stages(total, 2 * 10**9, 1, 1), 1
    )


def test_estimate_command(tmp_path: Path) -> None:
    from tests.conftest import run_cli, write_config

    path = write_config(tmp_path / "run.yaml", tiny_config(tmp_path))
    result = run_cli("estimate", str(path), "--gpus", "2", "--gpu-memory-gb", "0.001")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters: 112,448" in result.stdout
    assert "fits 0.001 GB per GPU: ZeRO-2 with optimizer offload" in result.stdout


def _tiny(model_type: str, auto: str = "AutoModelForCausalLM"):
    import transformers
    from transformers import AutoConfig

    import finetune.models  # noqa: F401  (registers the project's architectures)

    config = AutoConfig.for_model(
        model_type,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    return getattr(transformers, auto).from_config(config)


def test_the_pipeline_cut_follows_the_pp_plans() -> None:
    from finetune.distributed.pipeline import pp_stack

    for model_type in ("llama", "decoder"):
        model = _tiny(model_type)
        stack = pp_stack(model)
        assert stack.layers is model.model.layers and stack.lm_head is model.lm_head
        assert stack.embed_tokens is model.model.embed_tokens and stack.norm is model.model.norm

    # A model whose plan names its modules otherwise is cut where its plan says
    model = _tiny("llama")
    model.model.blocks = model.model.layers
    model.config.base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "blocks": (["hidden_states"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }
    assert pp_stack(model).layers is model.model.blocks

    for model_type, auto in (
        ("seq2seq", "AutoModelForSeq2SeqLM"),
        ("encoder", "AutoModelForMaskedLM"),
    ):
        with pytest.raises(ConfigError, match="declares no pipeline plan"):
            pp_stack(_tiny(model_type, auto))
