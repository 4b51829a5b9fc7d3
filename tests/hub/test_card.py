"""The hub section, file selection, model card and loss curve, without a server."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from finetune.config import dump_config, validate_config
from finetune.config.hub import HubConfig
from finetune.errors import ConfigError
from finetune.hub import HubError, base_model, hub_config_for, loss_curve_png, model_card, read_run
from finetune.hub.record import task
from finetune.hub.upload import stage
from tests.conftest import tiny_config

HUB = HubConfig(repo_id="alice/model")


def output_dir(tmp_path: Path, config: dict | None = None, adapter: dict | None = None, **run):
    """A fake finished run: what the trainer writes, minus real weights."""
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"\0" * 8)
    (out / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\0" * 8)
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    (out / weights).write_bytes(b"\0" * 8)
    if adapter:
        (out / "adapter_config.json").write_text(json.dumps(adapter))
        (out / "README.md").write_text("---\nlibrary_name: peft\n---\npeft's own card\n")
    else:
        config = config or {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        (out / "config.json").write_text(json.dumps(config))
        (out / "generation_config.json").write_text("{}")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (out / name).write_text("{}")
    (out / "training_args.bin").write_bytes(b"\0" * 8)
    (out / ".env").write_text("SECRET=1\n")
    cfg = validate_config(tiny_config(tmp_path, **run))
    (out / "run_config.yaml").write_text(dump_config(cfg))
    info = {"world_size": 2, "engine": "DeepSpeedEngine", "global_step": 20}
    info |= {"trainable_parameters": 10, "total_parameters": 100}
    info["metrics"] = {"train_loss": 3.5, "eval_loss": 3.25, "train_runtime": 12.0}
    info |= {"untrained_metrics": {"untrained_loss": 5.5, "untrained_runtime": 1.0}}
    info |= {"tokens_seen": 12345}
    (out / "run_info.json").write_text(json.dumps(info))
    logs = [{"step": s, "loss": 5.0 - s / 10} for s in range(2, 22, 2)]
    logs += [{"step": 10, "eval_loss": 4.0}, {"step": 20, "eval_loss": 3.25}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    return out


def staged(out: Path, tmp_path: Path, hub: HubConfig = HUB) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    stage(read_run(out), hub, hub.repo_id, staging)
    return staging


def test_hub_section_errors_name_the_field(tmp_path: Path) -> None:
    def errors(**hub) -> str:
        with pytest.raises(ConfigError) as info:
            validate_config(tiny_config(tmp_path, hub=hub))
        return str(info.value)

    assert "hub.push_to_hub is true but hub.repo_id is not set" in errors(push_to_hub=True)
    assert "hub.repo_id: 'my model' is not a Hub repo id" in errors(repo_id="my model")
    assert "hub.repo_id" in errors(repo_id="gpt2")  # a push target needs a namespace
    assert "hub.strategy" in errors(strategy="sometimes")
    assert "did you mean 'private'" in errors(privat=True)
    cfg = validate_config(tiny_config(tmp_path, hub={"repo_id": "alice/m", "base_model": "gpt2"}))
    assert cfg.hub.license == "apache-2.0" and cfg.hub.base_model == "gpt2"


def test_cli_overrides_keep_the_runs_hub_section(tmp_path: Path) -> None:
    hub = {"repo_id": "alice/from-run", "license": "mit", "revision": "dev"}
    out = output_dir(tmp_path, hub=hub)
    resolved = hub_config_for(out, repo_id="alice/other", private=None, revision=None)
    assert (resolved.repo_id, resolved.license, resolved.revision) == ("alice/other", "mit", "dev")
    with pytest.raises(ConfigError, match="--base-model: 'a b' is not a Hub repo id"):
        hub_config_for(out, base_model="a b")


def test_only_model_files_are_staged(tmp_path: Path) -> None:
    out = output_dir(tmp_path)
    assert sorted(p.name for p in staged(out, tmp_path).iterdir()) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "loss_curve.png",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_staging_leaves_the_output_directory_alone(tmp_path: Path) -> None:
    out = output_dir(tmp_path, method={"type": "lora"}, adapter={"task_type": "CAUSAL_LM"})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    staging = staged(out, tmp_path, HubConfig(repo_id="alice/m", base_model="org/base"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    adapter = json.loads((staging / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "org/base"  # only in the upload
    assert "peft's own card" not in (staging / "README.md").read_text()


def test_an_adapter_needs_a_base_model_on_the_hub(tmp_path: Path) -> None:
    adapter = {"task_type": "CAUSAL_LM", "base_model_name_or_path": str(tmp_path)}
    out = output_dir(tmp_path, method={"type": "lora"}, adapter=adapter)
    with pytest.raises(HubError, match="--base-model NAMESPACE/NAME"):
        staged(out, tmp_path)


def test_base_model_from_the_hub_cache(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    adapter = {"task_type": "CAUSAL_LM", "base_model_name_or_path": str(snapshot)}
    out = output_dir(tmp_path, method={"type": "lora"}, adapter=adapter)
    assert base_model(read_run(out), HUB) == "HuggingFaceTB/SmolLM2-135M"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"architectures": ["LlamaForCausalLM"]}, ("text-generation", "AutoModelForCausalLM")),
        ({"architectures": ["BertForMaskedLM"]}, ("fill-mask", "AutoModelForMaskedLM")),
        (
            {"architectures": ["BertForSequenceClassification"]},
            ("text-classification", "AutoModelForSequenceClassification"),
        ),
        (
            {"architectures": ["BartForConditionalGeneration"], "is_encoder_decoder": True},
            ("text2text-generation", "AutoModelForSeq2SeqLM"),
        ),
        (
            {
                "architectures": ["FinetuneEncoderForMaskedLM"],
                "auto_map": {"AutoModelForMaskedLM": "modeling_encoder.FinetuneEncoderForMaskedLM"},
            },
            ("fill-mask", "AutoModelForMaskedLM"),
        ),
        ({"architectures": ["LlavaForConditionalGeneration"]}, (None, "AutoModel")),
    ],
)
def test_pipeline_tag_and_auto_class(tmp_path: Path, config: dict, expected: tuple) -> None:
    assert task(read_run(output_dir(tmp_path, config=config))) == expected


def test_model_card_metadata_and_text(tmp_path: Path) -> None:
    out = output_dir(
        tmp_path,
        model={"architecture": None, "name_or_path": "HuggingFaceTB/SmolLM2-135M", "config": {}},
        tokenizer={"train": None},
        train={"gradient_accumulation_steps": 2, "micro_batch_size": 4},
    )
    hub = HubConfig(repo_id="alice/model", license="mit", datasets=["org/data"])
    text = model_card(read_run(out), hub, "alice/model", has_curve=True)
    card = ModelCard(text)
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "license": "mit",
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "pipeline_tag": "text-generation",
        "tags": ["finetune", "full", "llama"],
        "datasets": ["org/data"],
        "base_model_relation": "finetune",
    }
    assert "| eval_loss | 3.2500 |" in card.text
    assert "| eval_perplexity | 25.7903 |" in card.text
    assert "| untrained_loss | 5.5000 |" in card.text  # the gain from training
    assert "runtime" not in card.text
    assert "| tokens seen | 12,345 |" in card.text
    assert "| batch size | 16 (4 per device x 2 accumulation x 2 processes) |" in card.text
    assert "| hardware | 2 processes, engine DeepSpeedEngine |" in card.text
    assert "| samples seen | 320 |" in card.text
    assert "fine-tuned from [HuggingFaceTB/SmolLM2-135M]" in card.text
    assert "| 20 | 3.0000 | 3.2500 |" in card.text  # one row per step, the last one included


def test_card_names_the_objective_and_its_data(tmp_path: Path) -> None:
    out = output_dir(
        tmp_path,
        objective={"type": "dpo", "beta": 0.2, "loss_type": ["sigmoid", "sft"]},
        data={"train": [{"path": "/data/pairs.jsonl", "format": "preference"}]},
    )
    info = json.loads((out / "run_info.json").read_text())
    info["objective"] = "dpo"
    info["metrics"] |= {"eval_rewards/accuracies": 0.875, "eval_preference_accuracy": 0.9}
    (out / "run_info.json").write_text(json.dumps(info))
    text = model_card(read_run(out), HUB, "alice/model", has_curve=False)
    card = ModelCard(text)
    assert card.data.tags[:4] == ["finetune", "full", "trl", "dpo"]
    assert "| objective | DPO (TRL's DPOTrainer), loss sigmoid + sft, beta 0.2" in card.text
    assert "| training data | `pairs.jsonl` |" in card.text
    assert "| eval_rewards/accuracies | 0.8750 |" in card.text
    assert "perplexity" not in card.text  # a preference loss has none


def test_adapter_card_follows_peft(tmp_path: Path) -> None:
    adapter = {"task_type": "CAUSAL_LM", "peft_type": "LORA", "base_model_name_or_path": "a/b"}
    out = output_dir(tmp_path, method={"type": "lora"}, adapter=adapter)
    text = model_card(read_run(out), HUB, "alice/model", has_curve=False)
    data = ModelCard(text).data
    assert data.library_name == "peft"
    assert data.base_model == "a/b"
    assert "base_model:adapter:a/b" in data.tags
    assert "from peft import AutoPeftModelForCausalLM" in text
    assert "| LoRA rank / alpha / dropout | 16 / 32 / 0.0 |" in text
    assert "loss_curve.png" not in text


def test_loss_curve_png(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 4 / s} for s in range(1, 30)] + [{"step": 29, "eval_loss": 0.3}]
    image = Image.open(io.BytesIO(loss_curve_png(records)))
    assert image.format == "PNG" and image.size == (800, 460)
    assert loss_curve_png(records) == loss_curve_png(records)  # deterministic: no re-upload
    # the training curve is drawn in its colour
    assert (31, 119, 180) in {color for _, color in image.convert("RGB").getcolors(1 << 16)}
    assert loss_curve_png([{"step": 1, "loss": 2.0}]) is None


def test_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(HubError, match="holds no model to push"):
        read_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # a config without weights is no model either
    with pytest.raises(HubError, match="holds no model to push"):
        read_run(tmp_path)


def test_merged_and_base_models_inside_a_run(tmp_path: Path) -> None:
    adapter = {"task_type": "CAUSAL_LM", "peft_type": "LORA"}
    out = output_dir(tmp_path, method={"type": "lora"}, adapter=adapter)
    for sub in ("merged", "base_model"):
        (out / sub).mkdir()
        (out / sub / "model.safetensors").write_bytes(b"\0" * 8)
        (out / sub / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))

    merged = ModelCard(model_card(read_run(out / "merged"), HUB, "alice/m", has_curve=True))
    assert merged.data.library_name == "transformers"  # a full model, not an adapter
    assert "merged into these weights" in merged.text
    assert "| method | lora (peft), merged into the base weights |" in merged.text
    assert "| eval_loss | 3.2500 |" in merged.text  # the run's records, from output.dir

    base = ModelCard(model_card(read_run(out / "base_model"), HUB, "alice/b", has_curve=False))
    assert "randomly initialised `llama` model" in base.text
    assert "Training procedure" not in base.text and "lora" not in base.data.tags

    adapter["base_model_name_or_path"] = str(out / "base_model")
    (out / "adapter_config.json").write_text(json.dumps(adapter))
    with pytest.raises(HubError, match=f"finetune push {out / 'base_model'} --repo-id"):
        staged(out, tmp_path)


def test_no_pillow_no_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now raises ImportError
    out = output_dir(tmp_path)
    files = sorted(p.name for p in staged(out, tmp_path).iterdir())
    assert "loss_curve.png" not in files and "README.md" in files
    assert "loss_curve.png" not in (tmp_path / "staging" / "README.md").read_text()


def test_card_names_the_kto_objective(tmp_path: Path) -> None:
    out = output_dir(
        tmp_path,
        objective={"type": "kto", "beta": 0.5, "undesirable_weight": 1.3},
        data={"train": [{"path": "/data/feedback.jsonl", "format": "feedback"}]},
    )
    info = json.loads((out / "run_info.json").read_text())
    info["objective"] = "kto"
    (out / "run_info.json").write_text(json.dumps(info))
    card = ModelCard(model_card(read_run(out), HUB, "alice/model", has_curve=False))
    assert card.data.tags[:4] == ["finetune", "full", "trl", "kto"]
    assert (
        "| objective | KTO (TRL's KTOTrainer), loss kto, beta 0.5, desirable / undesirable "
        "weights 1 / 1.3, reference model |"
    ) in card.text
    assert "| training data | `feedback.jsonl` |" in card.text


@pytest.mark.parametrize(
    ("objective", "row"),
    [
        ({"type": "simpo"}, "SimPO (TRL's CPOTrainer), beta 2, margin 0.5, NLL weight 0"),
        ({"type": "cpo", "loss_type": "hinge"}, "CPO (TRL's CPOTrainer), loss hinge, beta 0.1"),
        ({"type": "orpo", "beta": 0.2}, "ORPO (TRL's ORPOTrainer), odds-ratio weight 0.2"),
    ],
)
def test_card_names_the_reference_free_objectives(tmp_path: Path, objective, row: str) -> None:
    out = output_dir(
        tmp_path,
        objective=objective,
        data={"train": [{"path": "/data/pairs.jsonl", "format": "preference"}]},
    )
    card = ModelCard(model_card(read_run(out), HUB, "alice/model", has_curve=False))
    assert f"| objective | {row}" in card.text
    assert objective["type"] in card.data.tags


@pytest.mark.parametrize(
    ("objective", "row"),
    [
        (
            {"type": "grpo", "num_generations": 8, "rewards": [{"type": "exact_match"}]},
            "GRPO (TRL's GRPOTrainer), 8 sampled completions per prompt of up to 32 tokens, "
            "rewards exact_match, KL weight 0, on prompts",
        ),
        (
            {
                "type": "rloo",
                "rewards": [
                    {"type": "function", "function": "my_rewards:brevity"},
                    {"type": "length", "max_tokens": 9},
                ],
            },
            "RLOO (TRL's RLOOTrainer), 4 sampled completions per prompt of up to 32 tokens, "
            "rewards my_rewards:brevity, length, KL weight 0, on prompts",
        ),
    ],
)
def test_card_names_the_online_objectives(tmp_path: Path, objective, row: str) -> None:
    out = output_dir(
        tmp_path,
        objective=objective,
        data={"train": [{"path": "/data/prompts.jsonl", "format": "prompt"}]},
    )
    card = ModelCard(model_card(read_run(out), HUB, "alice/model", has_curve=False))
    assert f"| objective | {row} |" in card.text
    assert objective["type"] in card.data.tags
