"""Every example config runs, and the encoder and encoder-decoder tasks train end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import finetune.models  # noqa: F401  (registers the project's architectures in this process)
from tests.conftest import REPO, run_cli

EXAMPLES = sorted((REPO / "configs" / "examples").glob("*.yaml"))
# Examples that start from a downloaded checkpoint, or learn from another run's model (a
# distillation teacher), run in their own (slow) tests.
FROM_SCRATCH = [
    p
    for p, cfg in ((p, yaml.safe_load(p.read_text())) for p in EXAMPLES)
    if "name_or_path" not in cfg["model"] and "teacher" not in str(cfg.get("objective"))
]


@pytest.mark.parametrize("example", FROM_SCRATCH, ids=lambda p: p.stem)
def test_example_config_runs(example: Path, tmp_path: Path) -> None:
    result = run_cli(
        "train",
        str(example),
        "--set",
        f"output.dir={tmp_path / 'out'}",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.eval_steps=2",
        "--set",
        "train.exact_match_rows=0",
        "--set",
        "train.eval_untrained=false",
        "--set",
        "logging.report_to=[]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "run_info.json").read_text())["global_step"] == 4


def _train(example: str, tmp_path: Path, steps: int) -> tuple[Path, dict]:
    out = tmp_path / "out"
    result = run_cli(
        "train",
        str(REPO / "configs" / "examples" / example),
        "--set",
        f"output.dir={out}",
        "--set",
        f"train.max_steps={steps}",
        "--set",
        f"train.eval_steps={steps}",
        "--set",
        "logging.report_to=[]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "run_info.json").read_text())


def test_encoder_masked_lm_learns(tmp_path: Path) -> None:
    out, info = _train("encoder-mlm.yaml", tmp_path, steps=80)
    # Untrained: about ln(vocab) = 6.2. Masked number tokens are guessable from the
    # template words around them, so 80 steps get well under half of it.
    assert info["metrics"]["eval_loss"] < 0.5 * info["untrained_metrics"]["untrained_loss"]
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.mask_token is not None
    ids = tokenizer("Question: Which is larger, 200 or 900? Answer: 900")["input_ids"]
    answer = tokenizer(" Answer", add_special_tokens=False)["input_ids"]
    assert len(answer) == 1
    position = ids.index(answer[0])
    ids[position] = tokenizer.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits[0, position].argmax().item() == answer[0]


def test_seq2seq_learns_and_reloads(tmp_path: Path) -> None:
    out, info = _train("seq2seq.yaml", tmp_path, steps=150)
    assert info["metrics"]["eval_loss"] < 0.5 * info["untrained_metrics"]["untrained_loss"]
    assert info["untrained_metrics"]["untrained_exact_match"] <= 0.05
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.config.model_type == "seq2seq"
    # `finetune eval` on the saved model reproduces the run's final evaluation.
    result = run_cli("eval", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["eval_loss"] == pytest.approx(info["metrics"]["eval_loss"], abs=1e-5)
    assert metrics["exact_match"] == pytest.approx(info["metrics"]["exact_match"])


def test_encoder_sequence_classification_learns(tmp_path: Path) -> None:
    out, info = _train("encoder-classify.yaml", tmp_path, steps=100)
    # Four balanced classes: chance is 25%; the question kind is in the words.
    assert info["untrained_metrics"]["untrained_accuracy"] < 0.5
    assert info["metrics"]["eval_accuracy"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "next", 1: "previous", 2: "larger", 3: "smaller"}
    inputs = tokenizer("Question: Which is smaller, 512 or 389? Answer:", return_tensors="pt")
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1).item()
    assert model.config.id2label[predicted] == "smaller"
