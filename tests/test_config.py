"""The run schema: shipped configs validate, and user mistakes get path-naming errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune.config import apply_override, load_config
from finetune.errors import ConfigError
from tests.conftest import REPO, run_cli, tiny_config, write_config

EXAMPLES = sorted((REPO / "configs").rglob("*.yaml"))


def test_examples_exist() -> None:
    assert EXAMPLES, "configs/ should ship example configs"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)


def _validate(tmp_path: Path, cfg: dict, *overrides: str):
    path = write_config(tmp_path / "run.yaml", cfg)
    args = [a for o in overrides for a in ("--set", o)]
    return run_cli("validate", str(path), *args, cwd=tmp_path)


def _assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_unknown_key_names_path_and_suggestion(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, method={"type": "lora", "rnak": 8})
    result = _validate(tmp_path, cfg)
    _assert_user_error(result, "method.rnak: unknown field (type 'lora'); did you mean 'rank'?")


def test_unknown_architecture_field(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["model"]["config"]["hidden_sise"] = 32
    result = _validate(tmp_path, cfg)
    _assert_user_error(
        result,
        "model.config: unknown field 'hidden_sise' for LlamaConfig; did you mean 'hidden_size'?",
    )


def test_wrong_type(tmp_path: Path) -> None:
    result = _validate(tmp_path, tiny_config(tmp_path), "train.micro_batch_size=lots")
    _assert_user_error(result, "train.micro_batch_size: Input should be a valid integer", "'lots'")


def test_wrong_literal_lists_choices(tmp_path: Path) -> None:
    result = _validate(tmp_path, tiny_config(tmp_path), "train.precision=bf17")
    _assert_user_error(
        result, "train.precision: Input should be 'fp32', 'bf16' or 'fp16'; got 'bf17'"
    )


def test_missing_required_field(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    del cfg["output"]
    _assert_user_error(_validate(tmp_path, cfg), "output: required field is missing")


def test_list_item_path(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["data"]["train"][0]["fromat"] = "text"
    _assert_user_error(
        _validate(tmp_path, cfg), "data.train[0].fromat: unknown field; did you mean 'format'?"
    )


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  architecture: llama\n   config: [1\n")
    result = run_cli("validate", str(path), cwd=tmp_path)
    _assert_user_error(result, f"{path}:3:", "invalid YAML")


def test_missing_file(tmp_path: Path) -> None:
    _assert_user_error(run_cli("validate", str(tmp_path / "nope.yaml")), "config file not found")


def test_validate_prints_resolved_config_with_overrides(tmp_path: Path) -> None:
    result = _validate(tmp_path, tiny_config(tmp_path), "train.lr=1e-4", "data.max_length=32")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["lr"] == 1e-4
    assert resolved["data"]["max_length"] == 32
    assert resolved["train"]["warmup_steps"] == 0  # defaults are written out


def test_override_creates_nested_sections() -> None:
    raw: dict = {}
    apply_override(raw, "method.lora.rank=8")
    apply_override(raw, "train.lr=1e-4")
    assert raw == {"method": {"lora": {"rank": 8}}, "train": {"lr": 1e-4}}


@pytest.mark.parametrize("bad", ["train.lr", "=3", "model.architecture.x=1"])
def test_malformed_override(bad: str, tmp_path: Path) -> None:
    raw = {"model": {"architecture": "llama"}}
    with pytest.raises(ConfigError, match="--set"):
        apply_override(raw, bad)


def test_one_model_source(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg["model"]["name_or_path"] = "some/model"
    _assert_user_error(_validate(tmp_path, cfg), "set exactly one of model.name_or_path")


def test_lamb_is_refused_for_adapters(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, method={"type": "lora"})
    result = _validate(tmp_path, cfg, "train.optimizer=lamb")
    _assert_user_error(result, "train.optimizer: lamb", "would never train", "use adamw")


def test_unknown_architecture(tmp_path: Path) -> None:
    result = _validate(tmp_path, tiny_config(tmp_path), "model.architecture=lama")
    _assert_user_error(result, "unknown architecture 'lama'", "did you mean")


def test_schema_is_documented() -> None:
    result = run_cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert "Peak learning rate" in train["lr"]["description"]
    assert schema["$defs"]["LoraMethod"]["additionalProperties"] is False
    dpo = schema["$defs"]["DpoObjective"]["properties"]
    assert "How far the model may move from the reference" in dpo["beta"]["description"]
    assert "adapter disabled" in dpo["reference"]["description"]
    assert (
        "prompt" in schema["$defs"]["PreferenceFormat"]["properties"]["prompt_field"]["description"]
    )


def test_cli_accepts_deepspeed_local_rank(tmp_path: Path) -> None:
    path = write_config(tmp_path / "run.yaml", tiny_config(tmp_path))
    result = run_cli("--local_rank=0", "validate", str(path))
    assert result.returncode == 0, result.stderr
