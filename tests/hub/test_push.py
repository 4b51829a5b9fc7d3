"""Train, push to a local Hub server, and check what the repo holds and what a push sends."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard
from PIL import Image

from tests.conftest import REPO, run_cli

from .conftest import (
    FULL_FILES,
    FULL_REPO,
    LORA_REPO,
    TOKENS,
    WRITE_TOKEN,
    Run,
    assert_no_token,
    hub_env,
)
from .fake_hub import FakeHub

pytestmark = pytest.mark.slow


def test_training_pushes_each_checkpoint_and_the_end(fake_hub: FakeHub, full_run: Run) -> None:
    messages = [m for repo, m in fake_hub.stats.commits if repo == FULL_REPO]
    assert messages == [
        "Training in progress, step 4",
        "Training in progress, step 8",
        "End of training",
    ]
    assert set(fake_hub.files(FULL_REPO)) == FULL_FILES
    # the final commit holds the final weights, byte for byte
    assert (
        fake_hub.read(FULL_REPO, "model.safetensors")
        == (full_run.out / "model.safetensors").read_bytes()
    )
    assert fake_hub.files(FULL_REPO)["model.safetensors"].lfs
    assert_no_token(full_run.output)


def test_full_model_card(fake_hub: FakeHub, full_run: Run) -> None:
    card = ModelCard(fake_hub.read(FULL_REPO, "README.md").decode())
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-generation"
    assert {"finetune", "full", "llama"} <= set(data["tags"])
    assert "base_model" not in data  # trained from scratch

    info = json.loads((full_run.out / "run_info.json").read_text())
    eval_loss = info["metrics"]["eval_loss"]
    assert f"| eval_loss | {eval_loss:.4f} |" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("alice/tiny-llama")' in card.text
    assert "trust_remote_code" not in card.text
    assert "| optimizer steps | 8 |" in card.text
    assert "| learning rate | 0.003, linear, 0 warm-up steps |" in card.text
    assert "![Training and evaluation loss](loss_curve.png)" in card.text

    png = Image.open(io.BytesIO(fake_hub.read(FULL_REPO, "loss_curve.png")))
    assert png.format == "PNG" and png.size == (800, 460)
    assert_no_token(card.content)


def test_lora_repo_is_a_peft_repo(fake_hub: FakeHub, lora_run: Run) -> None:
    files = set(fake_hub.files(LORA_REPO))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert not {"model.safetensors", "config.json", "training_args.bin"} & files
    adapter = json.loads(fake_hub.read(LORA_REPO, "adapter_config.json"))
    assert adapter["base_model_name_or_path"] == FULL_REPO
    data = ModelCard(fake_hub.read(LORA_REPO, "README.md").decode()).data.to_dict()
    assert data["library_name"] == "peft"
    assert data["base_model"] == FULL_REPO
    assert f"base_model:adapter:{FULL_REPO}" in data["tags"]
    assert {"finetune", "lora"} <= set(data["tags"])
    assert data["pipeline_tag"] == "text-generation"
    assert_no_token(lora_run.output)


def test_repush_of_an_unchanged_folder_sends_nothing(
    fake_hub: FakeHub, lora_run: Run, tmp_path
) -> None:
    # This time the token comes from the file `hf auth login` writes, not from HF_TOKEN.
    env = hub_env(fake_hub, tmp_path / "hf_home", token=None)
    (tmp_path / "hf_home" / "token").write_text(WRITE_TOKEN)
    uploads, commits = len(fake_hub.stats.lfs_uploads), len(fake_hub.stats.commits)
    seen = len(fake_hub.stats.requests)

    result = run_cli("push", str(lora_run.out), "--repo-id", LORA_REPO, **env)

    assert result.returncode == 0, result.stderr
    assert "already holds these files; nothing sent" in result.stdout
    assert len(fake_hub.stats.lfs_uploads) == uploads
    assert len(fake_hub.stats.commits) == commits
    requests = fake_hub.stats.requests[seen:]
    paths = [path for _, path, _ in requests]
    assert any(p.endswith("/preupload/main") for p in paths)  # the client did ask
    assert not any(method == "PUT" for method, _, _ in requests)
    assert not any("/commit/" in p for p in paths)
    assert_no_token(result.stdout, result.stderr)


def test_push_to_a_new_branch_changes_only_the_card(
    fake_hub: FakeHub, lora_run: Run, tmp_path
) -> None:
    env = hub_env(fake_hub, tmp_path / "hf_home")
    uploads = len(fake_hub.stats.lfs_uploads)
    result = run_cli("push", str(lora_run.out), "--repo-id", LORA_REPO, "--revision", "v2", **env)
    assert result.returncode == 0, result.stderr
    main, branch = fake_hub.files(LORA_REPO), fake_hub.files(LORA_REPO, "v2")
    assert set(main) == set(branch)
    changed = {p for p in main if main[p].git_oid != branch[p].git_oid}
    assert changed == {"README.md"}  # the usage snippet names the branch
    assert 'revision="v2"' in fake_hub.read(LORA_REPO, "README.md", "v2").decode()
    assert len(fake_hub.stats.lfs_uploads) == uploads  # the weights were on the Hub already


def test_run_config_records_the_hub_section(full_run: Run) -> None:
    saved = yaml.safe_load((full_run.out / "run_config.yaml").read_text())
    assert saved["hub"]["repo_id"] == FULL_REPO
    assert saved["hub"]["strategy"] == "every_save"
    assert_no_token((full_run.out / "run_config.yaml").read_text())


def test_private_flag_creates_a_private_repo(fake_hub: FakeHub, lora_run: Run, tmp_path) -> None:
    env = hub_env(fake_hub, tmp_path / "hf_home")
    repo = "alice/private-lora"
    result = run_cli("push", str(lora_run.out), "--repo-id", repo, "--private", **env)
    assert result.returncode == 0, result.stderr
    assert fake_hub.repos["alice/private-lora"].private
    assert fake_hub.repos[LORA_REPO].private is False


def test_no_token_reached_the_hub_storage(fake_hub: FakeHub, full_run: Run, lora_run: Run) -> None:
    for blob in (fake_hub.root / "blobs").iterdir():
        content = blob.read_bytes()
        assert not any(token.encode() in content for token in TOKENS), blob


def test_push_loads_neither_torch_nor_transformers(
    fake_hub: FakeHub, lora_run: Run, tmp_path
) -> None:
    """`finetune push` reads files and talks HTTP: it starts in well under a second because
    it imports neither torch nor transformers (nor the model registry that needs both)."""
    env = hub_env(fake_hub, tmp_path / "hf_home")
    script = (
        "import atexit, sys\n"
        "heavy = ('torch', 'transformers', 'finetune.models')\n"
        "atexit.register(lambda: print('loaded:', [m for m in heavy if m in sys.modules]))\n"
        "from finetune.cli import main\n"
        "sys.argv[0] = 'finetune'\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "push", str(lora_run.out), "--repo-id", "alice/light"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "pushed" in result.stdout
    assert result.stdout.strip().endswith("loaded: []")
