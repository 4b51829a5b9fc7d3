"""save_pretrained / from_pretrained, in process and through remote code without finetune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    LlamaForCausalLM,
)

from finetune.models import (
    ARCHITECTURES,
    FinetuneDecoderForCausalLM,
    FinetuneDecoderModel,
    FinetuneEncoderForMaskedLM,
    FinetuneEncoderForSequenceClassification,
    FinetuneEncoderModel,
    FinetuneSeq2SeqForConditionalGeneration,
    FinetuneSeq2SeqModel,
)
from finetune.models.convert import ConversionError, convert_checkpoint

from . import tiny

# (name, Auto class, our class, config factory, config overrides)
CASES = [
    ("decoder-lm", AutoModelForCausalLM, FinetuneDecoderForCausalLM, tiny.decoder_config, {}),
    ("decoder-base", AutoModel, FinetuneDecoderModel, tiny.decoder_config, {}),
    (
        "encoder-mlm",
        AutoModelForMaskedLM,
        FinetuneEncoderForMaskedLM,
        tiny.encoder_config,
        {"mlm_head_transform": True, "mlm_head_bias": True, "type_vocab_size": 2},
    ),
    (
        "encoder-cls",
        AutoModelForSequenceClassification,
        FinetuneEncoderForSequenceClassification,
        tiny.encoder_config,
        {"classifier_pooling": "mean"},
    ),
    ("encoder-base", AutoModel, FinetuneEncoderModel, tiny.encoder_config, {"add_pooler": True}),
    (
        "seq2seq-lm",
        AutoModelForSeq2SeqLM,
        FinetuneSeq2SeqForConditionalGeneration,
        tiny.seq2seq_config,
        {"positions": "sinusoidal", "final_logits_bias": True, "scale_embeddings": True},
    ),
    ("seq2seq-base", AutoModel, FinetuneSeq2SeqModel, tiny.seq2seq_config, {}),
]
IDS = [case[0] for case in CASES]


def build(case: tuple) -> torch.nn.Module:
    _, _, model_class, make_config, overrides = case
    tiny.seeded()
    model = model_class(make_config(**overrides)).eval()
    if isinstance(model, FinetuneSeq2SeqForConditionalGeneration):
        with torch.no_grad():
            model.final_logits_bias.normal_()  # must survive the round trip
    return model


def inputs_for(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ids = tiny.token_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = tiny.token_ids(2, 5, seed=1)
    return inputs


def main_output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if "logits" in output else output.last_hidden_state


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip_in_process(case: tuple, tmp_path: Path) -> None:
    _, auto_class, model_class, _, _ = case
    model = build(case)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved["auto_map"]) >= {"AutoConfig", "AutoModel"}
    for name in ("layers.py", "configuration_common.py"):
        assert (tmp_path / name).is_file()

    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    inputs = inputs_for(model)
    torch.testing.assert_close(main_output(loaded, inputs), main_output(model, inputs))
    assert_tied(loaded)


def assert_tied(model: torch.nn.Module) -> None:
    """Tied weights are one tensor after loading, not two equal copies."""
    if not model.config.tie_word_embeddings:
        return
    for target, source in model.get_expanded_tied_weights_keys(all_submodels=True).items():
        assert model.get_parameter(target) is model.get_parameter(source), target


def test_untied_head_stays_untied(tmp_path: Path) -> None:
    tiny.seeded()
    model = FinetuneDecoderForCausalLM(tiny.decoder_config(tie_word_embeddings=False))
    model.save_pretrained(tmp_path)
    loaded = FinetuneDecoderForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


# The loader run where finetune cannot be imported: a `finetune.py` first on sys.path raises
# ImportError (an editable install would otherwise still find the package).
REMOTE_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    import transformers

    try:
        import finetune
    except ImportError:
        pass
    else:
        raise SystemExit(f"finetune is importable from {finetune.__file__}")

    cases = json.loads(sys.argv[1])
    for name, auto_name, folder in cases:
        auto_class = getattr(transformers, auto_name)
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert model.__class__.__module__.startswith("transformers_modules"), model.__class__
        inputs = torch.load(f"{folder}/inputs.pt")
        with torch.no_grad():
            output = model(**inputs)
        result = output.logits if "logits" in output else output.last_hidden_state
        torch.save(result, f"{folder}/remote_output.pt")
        print(name, type(model).__name__, "ok")
    """
)


def test_remote_code_loads_without_finetune(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "finetune.py").write_text("raise ImportError('finetune is blocked in this test')\n")

    cases, expected = [], {}
    for case in CASES:
        name, auto_class = case[0], case[1]
        model = build(case)
        folder = tmp_path / name
        model.save_pretrained(folder)
        inputs = inputs_for(model)
        torch.save(inputs, folder / "inputs.pt")
        expected[name] = main_output(model, inputs)
        cases.append((name, auto_class.__name__, str(folder)))

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env.update(
        PYTHONPATH=str(blocker),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_LOADER)
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(cases)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name, _, folder in cases:
        remote = torch.load(Path(folder) / "remote_output.pt")
        torch.testing.assert_close(remote, expected[name], msg=name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_from_config_through_auto_class(case: tuple) -> None:
    _, auto_class, model_class, make_config, overrides = case
    fields = make_config(**overrides).to_diff_dict()
    model_type = fields.pop("model_type")
    fields.pop("transformers_version")
    config = AutoConfig.for_model(model_type, **fields)
    assert type(config) is ARCHITECTURES[model_type]
    model = auto_class.from_config(config)
    assert type(model) is model_class


def test_convert_checkpoint_directory_round_trip(tmp_path: Path) -> None:
    reference = tiny.llama(tie=True)
    source = tmp_path / "llama"
    reference.save_pretrained(source)
    (source / "tokenizer_config.json").write_text("{}")

    decoder_dir = convert_checkpoint(source, tmp_path / "decoder")
    assert json.loads((decoder_dir / "config.json").read_text())["model_type"] == "decoder"
    assert (decoder_dir / "tokenizer_config.json").is_file()
    ours = AutoModelForCausalLM.from_pretrained(decoder_dir)
    assert type(ours) is FinetuneDecoderForCausalLM
    ids = tiny.token_ids(2, 8)
    expected = main_output(reference, {"input_ids": ids})
    torch.testing.assert_close(main_output(ours, {"input_ids": ids}), expected)

    llama_dir = convert_checkpoint(decoder_dir, tmp_path / "back", to="llama")
    back = LlamaForCausalLM.from_pretrained(llama_dir)
    torch.testing.assert_close(main_output(back, {"input_ids": ids}), expected)

    with pytest.raises(ConversionError, match="converts to 'decoder' only"):
        convert_checkpoint(source, tmp_path / "x", to="seq2seq")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConversionError, match=r"'gpt2'.*supported sources: bart, bert"):
        convert_checkpoint(tmp_path / "gpt2", tmp_path / "y")


@pytest.mark.parametrize(
    ("make_reference", "auto_class", "target"),
    [
        (tiny.bert_classifier, AutoModelForSequenceClassification, "encoder"),
        (tiny.bart, AutoModelForSeq2SeqLM, "seq2seq"),
        (tiny.marian, AutoModelForSeq2SeqLM, "seq2seq"),
    ],
    ids=["bert", "bart", "marian"],
)
def test_convert_checkpoint_other_sources(
    make_reference, auto_class: type, target: str, tmp_path: Path
) -> None:
    reference = make_reference()
    reference.save_pretrained(tmp_path / "source")
    out = convert_checkpoint(tmp_path / "source", tmp_path / "out", to=target)
    ours = auto_class.from_pretrained(out).eval()
    assert ours.config.model_type == target
    inputs = {"input_ids": tiny.token_ids(2, 9)}
    if ours.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = tiny.token_ids(2, 4, seed=1)
        start = reference.config.decoder_start_token_id
        assert ours.generation_config.decoder_start_token_id == start
    torch.testing.assert_close(main_output(ours, inputs), main_output(reference, inputs))
