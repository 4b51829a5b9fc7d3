"""Pushes that must fail: clear messages, exit codes, no traceback, local files untouched."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.config.hub import HubConfig
from finetune.config.schema import OutputConfig
from finetune.errors import ConfigError
from finetune.hub import HubError, check_hub, hub_callbacks, push_trained
from tests.conftest import run_cli, tiny_config, write_config

from .conftest import (
    BOB_TOKEN,
    READ_TOKEN,
    TOKENS,
    WRITE_TOKEN,
    assert_no_token,
    hub_env,
    tree_hash,
)
from .fake_hub import FakeHub

pytestmark = pytest.mark.slow


def push(out: Path, repo_id: str, env: dict[str, str]):
    before = tree_hash(out)
    result = run_cli("push", str(out), "--repo-id", repo_id, **env)
    assert tree_hash(out) == before, "the push changed the local output directory"
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # the last line is finetune's message (huggingface_hub may log retries before it)
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    assert_no_token(result.stdout, result.stderr)
    return result


def test_no_token(fake_hub: FakeHub, output_copy: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub, tmp_path / "hf_home", token=None)
    result = push(output_copy, "alice/no-token", env)
    assert "no Hugging Face token found" in result.stderr
    assert "HF_TOKEN" in result.stderr and "hf auth login" in result.stderr
    assert "alice/no-token" not in fake_hub.repos


def test_invalid_token(fake_hub: FakeHub, output_copy: Path, tmp_path: Path) -> None:
    bad = "hf_thisTokenWasNeverIssuedByTheFakeHub01234"
    result = push(output_copy, "alice/bad-token", hub_env(fake_hub, tmp_path / "h", bad))
    assert "401 Unauthorized" in result.stderr
    assert "HF_TOKEN" in result.stderr
    assert bad not in result.stderr
    assert "alice/bad-token" not in fake_hub.repos


def test_read_only_token(fake_hub: FakeHub, output_copy: Path, tmp_path: Path) -> None:
    env = hub_env(fake_hub, tmp_path / "hf_home", READ_TOKEN)
    result = push(output_copy, "alice/read-only", env)
    assert "read-only" in result.stderr and "write access" in result.stderr
    assert "alice/read-only" not in fake_hub.repos


def test_token_without_rights_on_the_repo(
    fake_hub: FakeHub, output_copy: Path, tmp_path: Path
) -> None:
    # bob's write token against alice's existing repo: the Hub answers 403 to the upload
    commits = len(fake_hub.stats.commits)
    env = hub_env(fake_hub, tmp_path / "hf_home", BOB_TOKEN)
    result = push(output_copy, "alice/tiny-llama", env)
    assert "403 Forbidden" in result.stderr
    assert "may not write to alice/tiny-llama" in result.stderr
    assert len(fake_hub.stats.commits) == commits


def test_server_stopped_mid_upload(output_copy: Path, tmp_path: Path) -> None:
    hub = FakeHub(tmp_path / "hub", TOKENS).start()
    hub.drop_lfs_uploads = True
    env = hub_env(hub, tmp_path / "hf_home", WRITE_TOKEN)
    start = time.monotonic()
    try:
        # huggingface_hub retries the upload with backoff (about 23 s) before it gives up
        result = push(output_copy, "alice/dropped", env)
    finally:
        hub.stop()
    assert "connection to the Hub" in result.stderr
    assert "failed while pushing to alice/dropped" in result.stderr
    assert "again" in result.stderr
    assert time.monotonic() - start < 120
    # the repo was created, but no commit reached it: still the Hub's initial commit only
    assert hub.stats.commits == []
    assert set(hub.files("alice/dropped")) == {".gitattributes"}


def test_not_a_model_directory(fake_hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = push(tmp_path / "empty", "alice/empty", hub_env(fake_hub, tmp_path / "h"))
    assert "holds no model to push" in result.stderr


def test_bad_repo_id_names_the_option(fake_hub: FakeHub, output_copy: Path, tmp_path: Path):
    result = push(output_copy, "not a repo", hub_env(fake_hub, tmp_path / "h"))
    assert "error: --repo-id: 'not a repo' is not a Hub repo id" in result.stderr


def test_secret_in_a_file_is_refused(fake_hub: FakeHub, output_copy: Path, tmp_path: Path):
    config = output_copy / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"note": "' + WRITE_TOKEN + '", ', 1))
    result = push(output_copy, "alice/leaky", hub_env(fake_hub, tmp_path / "h"))
    assert "tokenizer_config.json contains what looks like a Hugging Face access token" in (
        result.stderr
    )
    assert "alice/leaky" not in fake_hub.repos


def test_training_with_push_checks_the_token_before_it_starts(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path, hub={"push_to_hub": True, "repo_id": "alice/never"})
    env = hub_env(fake_hub, tmp_path / "hf_home", token=None)
    result = run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)), **env)
    assert result.returncode != 0
    assert "no Hugging Face token found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(cfg["output"]["dir"]).exists()  # nothing was trained or written


def test_every_save_needs_checkpoints(tmp_path: Path) -> None:
    hub = HubConfig(push_to_hub=True, repo_id="alice/never", strategy="every_save")
    with pytest.raises(ConfigError, match=r"every_save pushes each checkpoint.*output\.save_steps"):
        check_hub(hub, OutputConfig(dir=str(tmp_path / "out")))


def test_a_failed_end_of_training_push_says_the_model_is_saved(tmp_path: Path) -> None:
    hub = HubConfig(push_to_hub=True, repo_id="alice/m")
    with pytest.raises(HubError, match="training finished and the model is saved in"):
        push_trained(tmp_path, hub)
    # a run that merged its adapter publishes the merged model
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    with pytest.raises(HubError, match=f"{tmp_path / 'merged'} holds no model to push"):
        push_trained(tmp_path, hub)


def test_a_failed_checkpoint_push_does_not_stop_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = HubConfig(push_to_hub=True, repo_id="alice/m", strategy="every_save")
    (callback,) = hub_callbacks(hub, tmp_path)
    args = SimpleNamespace(output_dir=str(tmp_path / "checkpoints"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    callback.on_save(args, state, control=None)  # no checkpoint-3 on disk: the push fails
    assert "checkpoint 3 was not pushed, training goes on" in caplog.text
    assert hub_callbacks(HubConfig(push_to_hub=True, repo_id="alice/m"), tmp_path) == []
