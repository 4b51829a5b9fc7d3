"""LoRA, QLoRA and the bitsandbytes optimizers on a tiny pretrained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from finetune.config import validate_config
from finetune.methods import apply_method, load_base_model, trainable_parameters
from tests.conftest import run_cli, tiny_config, write_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 'pretrained' Llama: 40 full fine-tuning steps from scratch, with its tokenizer."""
    tmp = tmp_path_factory.mktemp("base")
    cfg = tiny_config(tmp, train={"max_steps": 40})
    return _train(tmp, cfg)


def _config(tmp_path: Path, checkpoint: Path, method: dict, **train) -> dict:
    cfg = tiny_config(tmp_path, method=method, train={"max_steps": 30, **train})
    cfg["model"] = {"name_or_path": str(checkpoint)}
    del cfg["tokenizer"]
    return cfg


def _train(tmp_path: Path, cfg: dict) -> Path:
    result = run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)))
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(cfg["output"]["dir"])


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def _batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[5, 17, 42, 8, 99, 3, 61, 7]])}


@pytest.fixture(scope="module")
def lora_run(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lora")
    cfg = _config(tmp, checkpoint, {"type": "lora", "rank": 8, "alpha": 32}, lr=3e-2)
    cfg["train"]["merge_adapter"] = True
    return _train(tmp, cfg)


def test_lora_trains_only_the_adapter(lora_run: Path, checkpoint: Path) -> None:
    info = json.loads((lora_run / "run_info.json").read_text())
    base = load_file(checkpoint / "model.safetensors")
    rank, layers, hidden, inter = 8, 2, 64, 128  # tiny_config's Llama
    # q, o: 64->64; k, v: 64->32; gate, up: 64->128; down: 128->64 (r * (in + out) each).
    per_layer = rank * (2 * 128 + 2 * 96 + 2 * (hidden + inter) + (inter + hidden))
    assert info["trainable_parameters"] == layers * per_layer
    assert info["total_parameters"] == sum(t.numel() for t in base.values()) + layers * per_layer
    assert (lora_run / "adapter_config.json").is_file()
    assert not (lora_run / "model.safetensors").exists()
    losses = _losses(lora_run)
    assert losses[-1] < losses[0] - 0.1, losses  # the base stopped half-way; LoRA goes on


def test_lora_leaves_base_weights_bit_identical(lora_run: Path, checkpoint: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(lora_run)
    base = load_file(checkpoint / "model.safetensors")
    merged_state = model.get_base_model().state_dict()
    for name, tensor in base.items():
        key = name.replace(".weight", ".base_layer.weight")
        weight = merged_state.get(key, merged_state.get(name))
        torch.testing.assert_close(weight, tensor, rtol=0, atol=0, msg=name)


def test_merged_model_matches_the_adapter(lora_run: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    adapter = AutoPeftModelForCausalLM.from_pretrained(lora_run).eval()
    merged = AutoModelForCausalLM.from_pretrained(lora_run / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**_batch()).logits, adapter(**_batch()).logits, rtol=1e-5, atol=1e-5
        )


def test_adapter_loads_in_a_fresh_process_through_peft(lora_run: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    with torch.no_grad():
        expected = AutoPeftModelForCausalLM.from_pretrained(lora_run).eval()(**_batch()).logits
    script = f"""
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
ids = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 7]])
auto = AutoPeftModelForCausalLM.from_pretrained({str(lora_run)!r}).eval()
base = AutoModelForCausalLM.from_pretrained(auto.peft_config["default"].base_model_name_or_path)
manual = PeftModel.from_pretrained(base, {str(lora_run)!r}).eval()
with torch.no_grad():
    a, b = auto(input_ids=ids).logits, manual(input_ids=ids).logits
torch.testing.assert_close(a, b, rtol=0, atol=0)
torch.save(a, {str(lora_run / "fresh_logits.pt")!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(lora_run / "fresh_logits.pt"), expected)


def test_merge_command(lora_run: Path, tmp_path: Path) -> None:
    result = run_cli("merge", str(lora_run), "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr[-3000:]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    b = AutoModelForCausalLM.from_pretrained(lora_run / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(a(**_batch()).logits, b(**_batch()).logits, rtol=0, atol=0)
    refused = run_cli("merge", str(lora_run), "--out", str(tmp_path / "m"))
    assert refused.returncode == 2 and "not empty" in refused.stderr


def test_lora_on_a_model_built_from_scratch_keeps_its_base(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, method={"type": "lora"}, train={"max_steps": 5})
    out = _train(tmp_path, cfg)
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert model.peft_config["default"].base_model_name_or_path == str(
        (out / "base_model").resolve()
    )


@pytest.fixture(scope="module")
def qlora_run(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("qlora")
    cfg = _config(tmp, checkpoint, {"type": "qlora", "rank": 8, "alpha": 32}, lr=3e-2)
    cfg["train"].update(merge_adapter=True, gradient_checkpointing=True)
    return _train(tmp, cfg)


def test_qlora_base_is_4bit_and_loss_falls(qlora_run: Path, checkpoint: Path) -> None:
    import bitsandbytes as bnb

    cfg = validate_config(
        {
            "model": {"name_or_path": str(checkpoint)},
            "data": {"train": [{"path": "unused.txt"}]},
            "method": {"type": "qlora"},
            "output": {"dir": "unused"},
        }
    )
    from transformers import AutoTokenizer

    model = load_base_model(cfg.model, AutoTokenizer.from_pretrained(checkpoint), cfg.method)
    model = apply_method(model, cfg.method)
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # every projection of both layers
    trainable, total = trainable_parameters(model)
    base = load_file(checkpoint / "model.safetensors")
    # 4-bit weights are counted unpacked: the total is the real parameter count.
    assert total - trainable == sum(t.numel() for t in base.values())
    losses = _losses(qlora_run)
    assert losses[-1] < losses[0] - 0.1, losses


def test_qlora_merge_matches_the_adapter_on_its_4bit_base(qlora_run: Path) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    adapter = AutoPeftModelForCausalLM.from_pretrained(qlora_run, quantization_config=quant).eval()
    merged = AutoModelForCausalLM.from_pretrained(qlora_run / "merged").eval()
    with torch.no_grad():
        # The merged weights are the dequantized 4-bit weights plus the LoRA update. The
        # adapter model runs bitsandbytes' 4-bit CPU matmul instead of an fp32 one, which
        # accumulates differently: 9.5e-4 was the largest logit gap seen, so 2e-3 is the
        # stated tolerance (fp32 LoRA merges are checked at 1e-5 above).
        torch.testing.assert_close(
            merged(**_batch()).logits, adapter(**_batch()).logits, rtol=2e-3, atol=2e-3
        )


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw", "lamb"])
def test_bitsandbytes_optimizers_train(optimizer: str, checkpoint: Path, tmp_path: Path) -> None:
    lr = 5e-2 if optimizer == "lamb" else 3e-3  # LAMB scales steps by the weight norm
    cfg = _config(tmp_path, checkpoint, {"type": "full"}, optimizer=optimizer, lr=lr)
    losses = _losses(_train(tmp_path, cfg))
    assert losses[-1] < losses[0] - 0.1, (optimizer, losses)


def test_lamb_leaves_a_zero_weight_at_zero() -> None:
    """Why `lamb` is refused for LoRA (schema): bitsandbytes caps each LAMB step at the
    weight's norm, so a zero-initialized LoRA B matrix never moves. If a release changes
    that, this fails and the refusal can go."""
    import bitsandbytes as bnb

    weight = torch.nn.Parameter(torch.zeros(64, 8))
    optimizer = bnb.optim.LAMB([weight], lr=0.1)
    for _ in range(3):
        weight.grad = torch.randn_like(weight)
        optimizer.step()
    assert weight.abs().max() == 0


def test_qlora_needs_a_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, method={"type": "qlora"})
    result = run_cli("validate", str(write_config(tmp_path / "q.yaml", cfg)))
    assert result.returncode == 2
    assert "qlora quantizes pretrained weights; set model.name_or_path" in result.stderr


def _qlora_gradients(checkpoint: Path, evaluate_first: bool) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    cfg = validate_config(
        {
            "model": {"name_or_path": str(checkpoint)},
            "data": {"train": [{"path": "unused.txt"}]},
            "method": {"type": "qlora"},
            "output": {"dir": "unused"},
        }
    )
    torch.manual_seed(0)
    model = load_base_model(cfg.model, AutoTokenizer.from_pretrained(checkpoint), cfg.method)
    model = apply_method(model, cfg.method)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # nonzero B, so gradients depend on every layer's path
            torch.nn.init.normal_(param, std=0.02)
    if evaluate_first:
        model.eval()
        with torch.no_grad():
            model(**_batch())
    model.train()
    batch = _batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_qlora_keeps_gradients_after_an_evaluation(checkpoint: Path) -> None:
    """An eval-mode forward (eval_untrained, eval_steps) must not switch bitsandbytes to its
    CPU inference layout, which has no backward (seen on AVX512-BF16 CPUs)."""
    fresh = _qlora_gradients(checkpoint, evaluate_first=False)
    after_eval = _qlora_gradients(checkpoint, evaluate_first=True)
    assert fresh.keys() == after_eval.keys() and fresh
    for name, grad in fresh.items():
        torch.testing.assert_close(after_eval[name], grad, rtol=1e-5, atol=1e-6, msg=name)
