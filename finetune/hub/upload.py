"""Staging a run's publishable files with its card, refusing any that holds a token, and
uploading them with `huggingface_hub.upload_folder`; the preflight and the end-of-training
push.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

from finetune.config.hub import HubConfig
from finetune.config.schema import OutputConfig
from finetune.errors import ConfigError
from finetune.hub.card import model_card
from finetune.hub.errors import HubAuthError, HubError, hub_errors, token_source
from finetune.hub.plot import loss_curve_png
from finetune.hub.record import WEIGHTS, RunRecord, base_model, read_run
from finetune.layout import BASE_MODEL, CARD, LOSS_CURVE, MERGED

logger = logging.getLogger(__name__)


# What a model repo needs, at the top level of the folder; nothing else is uploaded.


UPLOAD = (
    *WEIGHTS,
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "*.py",  # configuration_*/modeling_* and their sibling imports, for trust_remote_code
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)


# Remote files a new push replaces: stale weights or an old adapter_config.json would make
# transformers load something else than what was pushed.
STALE = (*WEIGHTS, "adapter_config.json", "adapter_model.bin", "pytorch_model*.bin")


TEXT_SUFFIXES = {".json", ".jinja", ".md", ".py", ".txt", ".yaml", ".yml"}


TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")


@dataclass
class PushResult:
    """What a push did."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    changed: bool
    """False when the Hub already held every file: nothing was uploaded, no commit made."""
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def stage(record: RunRecord, hub: HubConfig, repo_id: str, staging: Path) -> list[str]:
    """Fill the empty folder `staging` with what the repo should hold; return the notes.

    Files are symlinked (copied where links are not possible); the card and the loss curve
    are written there, and an adapter_config.json that names a local base model is written
    with the Hub id instead. Nothing in the output directory changes.

    Raises:
        HubError: an adapter whose base model is not on the Hub, or a file holding a token.
    """
    notes = []
    for path in sorted(record.model_dir.iterdir()):
        if path.is_file() and any(fnmatch(path.name, p) for p in UPLOAD):
            _link(path, staging / path.name)
    if record.adapter is not None:
        notes += _stage_adapter_config(record, hub, staging)
    png = loss_curve_png(record.metrics)
    if png is not None:
        (staging / LOSS_CURVE).write_bytes(png)
    (staging / CARD).write_text(model_card(record, hub, repo_id, has_curve=png is not None))
    check_no_secrets(staging)
    return notes


def _link(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, target)


def _stage_adapter_config(record: RunRecord, hub: HubConfig, staging: Path) -> list[str]:
    base = base_model(record, hub)
    declared = record.adapter.get("base_model_name_or_path")
    if base is None:
        where = f"the local path {declared!r}" if declared else "no base model at all"
        first = "the base model"
        if declared and Path(declared).name == BASE_MODEL and Path(declared).is_dir():
            first = f"it with `finetune push {declared} --repo-id NAMESPACE/NAME`"
        raise HubError(
            f"the adapter in {record.model_dir} names {where} as its base model, so "
            f"AutoPeftModel could not load it from the Hub. Push {first} first and pass "
            "--base-model NAMESPACE/NAME (hub.base_model), or train with method.type=full "
            "or train.merge_adapter"
        )
    if declared == base:
        return []
    (staging / "adapter_config.json").unlink()
    (staging / "adapter_config.json").write_text(
        json.dumps({**record.adapter, "base_model_name_or_path": base}, indent=2) + "\n"
    )
    return [f"adapter_config.json: base_model_name_or_path {declared!r} -> {base!r} in the upload"]


def check_no_secrets(folder: Path) -> None:
    """Refuse to upload text files that contain the Hub token or anything shaped like one.

    Raises:
        HubError: names the file; the token itself is never shown.
    """
    from huggingface_hub import get_token

    token = get_token()
    for path in sorted(folder.iterdir()):
        if path.suffix not in TEXT_SUFFIXES or path.stat().st_size > 64 * 2**20:
            continue
        content = path.read_bytes()
        if (token and token.encode() in content) or TOKEN_PATTERN.search(content):
            raise HubError(
                f"{path.name} contains what looks like a Hugging Face access token; remove it "
                "from the file (and revoke the token if it was ever shared). Nothing was uploaded"
            )


def push(
    model_dir: Path,
    hub: HubConfig,
    *,
    run_dir: Path | None = None,
    commit_message: str | None = None,
    step: int | None = None,
) -> PushResult:
    """Publish `model_dir` to `hub.repo_id`: create the repo (and branch) and upload.

    Args:
        model_dir: A run's output directory, or one of its checkpoints.
        hub: Target repo, visibility, branch, license and base model.
        run_dir: Where run_config.yaml, run_info.json and metrics.jsonl are (default:
            `model_dir`).
        commit_message: Defaults to "Upload <name> with finetune".
        step: For a checkpoint pushed during training: its step, shown in the card.

    Raises:
        HubAuthError: no token, or the Hub refused it or the write.
        HubConnectionError: the Hub was unreachable or the connection dropped.
        HubError: nothing publishable in `model_dir`, or another refusal by the Hub.
    """
    if hub.repo_id is None:
        raise ConfigError("no repository to push to: pass --repo-id NAMESPACE/NAME")
    record = read_run(Path(model_dir), Path(run_dir) if run_dir else None)
    record.step = step
    _require_token()
    revision = hub.revision or "main"
    message = commit_message or f"Upload {hub.repo_id.split('/')[-1]} with finetune"
    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        staging = Path(tmp)
        notes = stage(record, hub, hub.repo_id, staging)
        files = sorted(p.name for p in staging.iterdir())
        with hub_errors(hub.repo_id, model_dir):
            commit, changed = _upload(staging, hub, revision, message)
    return PushResult(
        repo_id=hub.repo_id,
        revision=revision,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        changed=changed,
        files=files,
        notes=notes,
    )


def preview(model_dir: Path, hub: HubConfig) -> str:
    """What `push` would upload: the file list and the model card. Needs no token.

    Raises:
        HubError: as `push` would, for anything found before the upload starts.
    """
    if hub.repo_id is None:
        raise ConfigError("no repository to push to: pass --repo-id NAMESPACE/NAME")
    record = read_run(Path(model_dir))
    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        staging = Path(tmp)
        notes = stage(record, hub, hub.repo_id, staging)
        sizes = [(p.name, p.stat().st_size) for p in sorted(staging.iterdir())]
        card = (staging / CARD).read_text()
    lines = [f"would push to {hub.repo_id}@{hub.revision or 'main'}:"]
    lines += [f"  {name} ({size:,} bytes)" for name, size in sizes]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines) + f"\n\n{card}"


def _upload(staging: Path, hub: HubConfig, revision: str, message: str) -> tuple[Any, bool]:
    api = _api()
    _check_token(api)
    api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
    if revision != "main":
        api.create_branch(hub.repo_id, branch=revision, exist_ok=True)
    head = api.model_info(hub.repo_id, revision=revision).sha
    commit = api.upload_folder(
        repo_id=hub.repo_id,
        folder_path=staging,
        revision=revision,
        commit_message=message,
        delete_patterns=list(STALE),
    )
    return commit, commit.oid != head


@cache
def _api() -> Any:
    """One client per process, so that whoami answers are cached (the Hub rate-limits
    whoami strictly, and every_save would otherwise ask at each checkpoint)."""
    from huggingface_hub import HfApi

    return HfApi()


def _require_token() -> None:
    from huggingface_hub import get_token

    if get_token() is None:
        raise HubAuthError(
            "no Hugging Face token found: set the HF_TOKEN environment variable to a token "
            "with write access (https://huggingface.co/settings/tokens) or run "
            "`hf auth login`. Nothing was uploaded"
        )


def _check_token(api: Any) -> None:
    """Fail early, with a clear message, on a token the Hub rejects or that cannot write."""
    me = api.whoami(cache=True)
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(
            f"the token from {token_source()} (user {me.get('name')!r}) is read-only; create "
            "a token with write access at https://huggingface.co/settings/tokens. "
            "Nothing was uploaded"
        )


def check_hub(hub: HubConfig, output: OutputConfig) -> None:
    """Preflight for `hub.push_to_hub`: a token exists (and, on rank 0, the Hub accepts it)
    and `every_save` has checkpoints to push, before hours of training.

    Raises:
        ConfigError: `every_save` without `output.save_steps`.
        HubAuthError, HubConnectionError: no token, or the Hub refuses it.
    """
    if not hub.push_to_hub:
        return
    if hub.strategy == "every_save" and output.save_steps is None:
        raise ConfigError(
            "hub.strategy: every_save pushes each checkpoint, but output.save_steps is not set; "
            "set output.save_steps, or hub.strategy=end"
        )
    _require_token()
    if int(os.environ.get("RANK", "0")) == 0:
        with hub_errors(hub.repo_id, Path(output.dir)):
            _check_token(_api())


def push_trained(out: Path, hub: HubConfig) -> PushResult:
    """The end-of-training push (rank 0), after the model and run_info.json are saved.

    A run that merged its adapter (output.dir/merged) pushes the merged model, which loads
    anywhere without peft or the base; `finetune push OUTPUT_DIR` still pushes the adapter.

    Raises:
        HubError: the push failed; the message says the model is saved and how to retry.
    """
    merged = out / MERGED
    if (merged / "config.json").is_file():  # the run asked for a standalone model
        out = merged
    try:
        result = push(out, hub, commit_message="End of training")
    except HubError as err:
        raise type(err)(f"training finished and the model is saved in {out}, but {err}") from None
    logger.info("pushed %s to %s (%s)", out, hub.repo_id, result.commit_url)
    return result
