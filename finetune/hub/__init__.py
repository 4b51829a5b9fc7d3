"""Publish a run to the Hugging Face Hub: pick the files, write the model card, upload.

A push never writes into the output directory. The files to publish are linked into a
temporary staging folder, together with the generated model card (README.md) and loss
curve (loss_curve.png), and that folder is uploaded with `huggingface_hub.upload_folder`.
Only an allowlist leaves the machine: weights as safetensors, config.json (with its
auto_map), the model's .py files for `trust_remote_code`, generation_config.json, the
tokenizer and, for a LoRA run, the peft adapter. Checkpoints, optimizer state,
training_args.bin, run_config.yaml (local paths) and logs stay local.

upload_folder asks the Hub which files it holds already (preupload, sha256 for LFS files),
so a re-push of an unchanged folder uploads nothing and makes no commit; with `hf_xet`
installed it also splits big folders into several resumable commits.

The token comes from HF_TOKEN or `hf auth login` through huggingface_hub; this module
never logs, prints or stores it, and refuses to upload a file that contains it.

Modules, by concern: `record` (what the run left on disk), `card` (the model card), `plot`
(its loss curve), `upload` (staging, secret check, upload, the end-of-training push),
`callback` (a push per checkpoint) and `errors`. None imports torch or transformers at
import time, so `finetune push` loads neither.
"""

from finetune.hub.callback import hub_callbacks
from finetune.hub.card import model_card
from finetune.hub.errors import HubAuthError, HubConnectionError, HubError
from finetune.hub.plot import loss_curve_png
from finetune.hub.record import base_model, hub_config_for, read_run
from finetune.hub.upload import PushResult, check_hub, preview, push, push_trained

__all__ = [
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "PushResult",
    "base_model",
    "check_hub",
    "hub_callbacks",
    "hub_config_for",
    "loss_curve_png",
    "model_card",
    "preview",
    "push",
    "push_trained",
    "read_run",
]
