"""Pushed repos load by repo id where finetune is not installed, with identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from .conftest import Run, hub_env, run_without_finetune
from .fake_hub import FakeHub

pytestmark = pytest.mark.slow

INPUT_IDS = [[5, 17, 42, 9, 100, 3, 77, 12]]

# Loads every pushed repo from the fake Hub by id and saves its logits; runs where
# `import finetune` fails. argv[1]: [[name, loader, repo_id, trust_remote_code, task], ...]
LOADER = """
import json, sys
import torch
import transformers
from peft import AutoPeftModelForCausalLM
from transformers import pipeline

ids = torch.tensor(json.loads(sys.argv[2]))
report = {}
for name, loader, repo_id, remote, task in json.loads(sys.argv[1]):
    cls = AutoPeftModelForCausalLM if loader == "AutoPeftModelForCausalLM" else getattr(
        transformers, loader
    )
    kwargs = {"trust_remote_code": True} if remote else {}
    model = cls.from_pretrained(repo_id, **kwargs).eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.save(logits, f"{name}.pt")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    entry = {"module": type(base).__module__, "class": type(model).__name__}
    if task == "text-generation":
        pipe = pipeline(task, model=repo_id, **kwargs)
        entry["pipeline"] = pipe("the cat sat", max_new_tokens=4, do_sample=False)
    elif task == "text-classification":
        pipe = pipeline(task, model=repo_id, **kwargs)
        entry["pipeline"] = pipe("the red tree")
    report[name] = entry
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def remote(
    fake_hub: FakeHub,
    full_run: Run,
    lora_run: Run,
    decoder_run: Run,
    encoder_run: Run,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict]:
    cases = [
        ["llama", "AutoModelForCausalLM", full_run.repo_id, False, "text-generation"],
        ["lora", "AutoPeftModelForCausalLM", lora_run.repo_id, False, None],
        ["decoder", "AutoModelForCausalLM", decoder_run.repo_id, True, "text-generation"],
        [
            "encoder",
            "AutoModelForSequenceClassification",
            encoder_run.repo_id,
            True,
            "text-classification",
        ],
    ]
    root = tmp_path_factory.mktemp("remote")
    env = hub_env(fake_hub, root / "hf_home", token=None)  # public repos: no token needed
    result = run_without_finetune(LOADER, env, root, json.dumps(cases), json.dumps(INPUT_IDS))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root, json.loads(result.stdout.strip().splitlines()[-1])


def local_logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_llama_loads_without_remote_code(remote, full_run: Run) -> None:
    root, report = remote
    assert report["llama"]["module"] == "transformers.models.llama.modeling_llama"
    expected = local_logits(AutoModelForCausalLM.from_pretrained(full_run.out))
    assert torch.equal(torch.load(root / "llama.pt"), expected)
    assert report["llama"]["pipeline"][0]["generated_text"].startswith("the cat sat")


def test_lora_adapter_loads_with_auto_peft_model(remote, full_run: Run, lora_run: Run) -> None:
    from peft import PeftModel

    root, report = remote
    assert report["lora"]["class"] == "PeftModelForCausalLM"
    base_logits = local_logits(AutoModelForCausalLM.from_pretrained(full_run.out))
    base = AutoModelForCausalLM.from_pretrained(full_run.out)
    expected = local_logits(PeftModel.from_pretrained(base, lora_run.out))
    assert torch.equal(torch.load(root / "lora.pt"), expected)
    # the adapter changed the model: the comparison is not between two copies of the base
    assert not torch.equal(expected, base_logits)


def test_decoder_loads_with_remote_code(remote, fake_hub: FakeHub, decoder_run: Run) -> None:
    import finetune.models  # noqa: F401  (the local reference loads through the registration)

    root, report = remote
    assert report["decoder"]["module"].startswith("transformers_modules.")
    expected = local_logits(AutoModelForCausalLM.from_pretrained(decoder_run.out))
    assert torch.equal(torch.load(root / "decoder.pt"), expected)
    assert report["decoder"]["pipeline"][0]["generated_text"].startswith("the cat sat")

    files = set(fake_hub.files(decoder_run.repo_id))
    assert {"modeling_decoder.py", "configuration_decoder.py", "layers.py"} <= files
    card = ModelCard(fake_hub.read(decoder_run.repo_id, "README.md").decode())
    assert card.data.license == "mit"
    assert "custom_code" in card.data.tags
    assert "trust_remote_code=True" in card.text


def test_encoder_classifier_loads_with_remote_code(
    remote, fake_hub: FakeHub, encoder_run: Run
) -> None:
    from transformers import AutoModelForSequenceClassification

    import finetune.models  # noqa: F401

    root, report = remote
    assert report["encoder"]["module"].startswith("transformers_modules.")
    expected = local_logits(AutoModelForSequenceClassification.from_pretrained(encoder_run.out))
    assert torch.equal(torch.load(root / "encoder.pt"), expected)
    assert report["encoder"]["pipeline"][0]["label"] in {"red", "green", "blue"}
    data = ModelCard(fake_hub.read(encoder_run.repo_id, "README.md").decode()).data
    assert data.pipeline_tag == "text-classification"
    assert data.library_name == "transformers"
