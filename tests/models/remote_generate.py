"""Load saved models through remote code and generate: run as a script where finetune is blocked.

Usage: python remote_generate.py FOLDER [FOLDER ...]. Each folder holds what
`learned.save_generation_cases` wrote; this writes `remote_tokens.pt` beside it and prints the
transformers version that ran. Imports torch and transformers only, as a Hub user would.
"""

import json
import sys
from pathlib import Path

import torch
import transformers


def main(folders: list[str]) -> None:
    try:
        import finetune
    except ImportError:
        pass
    else:
        raise SystemExit(f"finetune is importable from {finetune.__file__}")

    for folder in folders:
        case = json.loads(Path(folder, "case.json").read_text())
        auto_class = getattr(transformers, case["auto_class"])
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        if not type(model).__module__.startswith("transformers_modules"):
            raise SystemExit(f"{folder} did not load through remote code: {type(model)}")
        inputs = torch.load(f"{folder}/inputs.pt")
        tokens = {
            mode: model.generate(**inputs, **case["options"], **extra)
            for mode, extra in case["modes"].items()
        }
        torch.save(tokens, f"{folder}/remote_tokens.pt")
    print("transformers", transformers.__version__)


if __name__ == "__main__":
    main(sys.argv[1:])
