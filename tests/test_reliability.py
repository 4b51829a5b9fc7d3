"""Faults a run must survive or report: divergence, bad configs over an earlier run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune.layout import STAGED, STAGING
from finetune.train.checkpoints import CHECKPOINT_MANIFEST

from .conftest import REPO, run_cli

pytestmark = pytest.mark.faults

# The shortened quickstart: 24 steps, no evaluation, a checkpoint every step
QUICK = [
    "configs/examples/quickstart.yaml",
    *("--set", "data.eval=[]", "--set", "train.exact_match_rows=0"),
    *("--set", "train.eval_untrained=false", "--set", "train.max_steps=24"),
    *("--set", "output.save_steps=1", "--set", "train.micro_batch_size=8"),
]


def test_divergence_stops_the_run_before_saving_non_finite_weights(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("train", *QUICK, "--set", "train.lr=1e4", "--set", f"output.dir={out}")
    assert result.returncode == 4, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    message = errors[0]
    assert message.startswith("error: training diverged at step ") and "nan" in message
    assert "Traceback" not in result.stderr
    step = int(message.removeprefix("error: training diverged at step ").split(":")[0])
    assert not (out / "model.safetensors").exists()  # no final model
    saved = sorted((out / "checkpoints").glob("checkpoint-*"))
    # Every step before the diverged one was checkpointed, with finite weights only
    assert [p.name for p in saved] == [f"checkpoint-{s}" for s in sorted(range(1, step), key=str)]
    for checkpoint in saved:
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_numbers_are_config_errors(value: str) -> None:
    result = run_cli("validate", "configs/examples/quickstart.yaml", "--set", f"train.lr={value}")
    assert result.returncode == 2
    assert "train.lr: Input should be a finite number" in result.stderr


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


SHORT = [*QUICK, "--set", "train.max_steps=4", "--set", "output.save_steps=2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step quickstart run with checkpoints at steps 2 and 4 (copy before use)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    result = run_cli("train", *SHORT, "--set", f"output.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def _one_error(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    "bad",
    ["model.config.num_attention_heads=5", "model.config.ffn=swiglu2"],
    ids=["model-cannot-be-built", "invalid-model-field"],
)
def test_overwrite_with_a_bad_model_keeps_the_earlier_run(
    finished_run: Path, tmp_path: Path, bad: str
) -> None:
    out = _copy(finished_run, tmp_path)
    before = _snapshot(out)
    assert "model.safetensors" in before and "checkpoints/checkpoint-4/finetune_complete" in before

    result = run_cli("train", *SHORT, "--set", f"output.dir={out}", "--overwrite", "--set", bad)
    assert result.returncode == 2, result.stderr[-3000:]
    _one_error(result)
    assert _snapshot(out) == before  # every file of the earlier run, byte for byte
    assert not any(p.name.endswith(".replaced") for p in tmp_path.iterdir())


def test_resume_of_a_finished_run_is_refused_unless_it_trains_further(
    finished_run: Path, tmp_path: Path
) -> None:
    out = _copy(finished_run, tmp_path)
    before = _snapshot(out)
    result = run_cli("train", *SHORT, "--set", f"output.dir={out}", "--resume")
    assert result.returncode == 2
    assert "already finished (4 steps)" in _one_error(result)
    assert _snapshot(out) == before

    more = run_cli(
        "train", *SHORT, "--set", f"output.dir={out}", "--set", "train.max_steps=6", "--resume"
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 6


def test_resume_after_a_cut_final_save_ignores_its_remains(
    finished_run: Path, tmp_path: Path
) -> None:
    out = _copy(finished_run, tmp_path)
    # A kill during the first final save: its files half written in the staging directory
    # (no list of them yet), none in the output directory, no run_info.json
    (out / STAGING).mkdir()
    (out / "config.json").replace(out / STAGING / "config.json")
    weights = (out / "model.safetensors").read_bytes()
    (out / STAGING / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (out / "model.safetensors").unlink()
    (out / "run_info.json").unlink()
    result = run_cli("train", *SHORT, "--set", f"output.dir={out}", "--resume")
    assert result.returncode == 2
    assert "checkpoint-4 already reached train.max_steps (4)" in _one_error(result)
    assert not (out / STAGING).exists()  # dropped: it never held a whole model

    more = run_cli(
        "train", *SHORT, "--set", f"output.dir={out}", "--set", "train.max_steps=6", "--resume"
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["model_type"] == "decoder"
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 6


def test_a_resume_that_fails_keeps_the_final_model(finished_run: Path, tmp_path: Path) -> None:
    """Resuming a finished run to train further must not cost it its model when the resume
    fails (here: no checkpoint passes its check)."""
    out = _copy(finished_run, tmp_path)
    for manifest in (out / "checkpoints").glob(f"*/{CHECKPOINT_MANIFEST}"):
        manifest.unlink()
    before = {name: (out / name).read_bytes() for name in ("config.json", "model.safetensors")}
    result = run_cli(
        "train", *SHORT, "--set", f"output.dir={out}", "--set", "train.max_steps=6", "--resume"
    )
    assert result.returncode == 2
    assert "no complete checkpoint" in _one_error(result)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_final_save_killed_during_its_move(finished_run: Path, tmp_path: Path) -> None:
    """The remains of a kill while the final model was being moved into place: the new
    config.json moved, the new weights still staged. Loading refuses the mix; --resume
    finishes the move (and then refuses to retrain the finished run)."""
    out = _copy(finished_run, tmp_path)
    staging = out / STAGING
    staging.mkdir()
    weights = load_file(out / "model.safetensors")
    save_file({k: v + 1 for k, v in weights.items()}, staging / "model.safetensors")
    shutil.copy(out / "config.json", staging / "config.json")
    (staging / STAGED).write_text(json.dumps({"files": ["config.json", "model.safetensors"]}))
    (staging / "config.json").replace(out / "config.json")
    staged = (staging / "model.safetensors").read_bytes()

    result = run_cli("generate", str(out), "--prompt", "What number comes after 4?")
    assert result.returncode == 1
    assert "final model is being moved into place" in _one_error(result)

    result = run_cli("train", *SHORT, "--set", f"output.dir={out}", "--resume")
    assert result.returncode == 2
    assert "already finished (4 steps)" in _one_error(result)
    assert "finished moving the final model" in result.stderr
    assert (out / "model.safetensors").read_bytes() == staged and not staging.exists()
    result = run_cli("generate", str(out), "--prompt", "What number comes after 4?")
    assert result.returncode == 0, result.stderr[-3000:]


def test_eval_of_a_directory_without_a_model_is_refused(finished_run: Path, tmp_path: Path) -> None:
    # Only the run config, whose output.dir names a directory that does hold a model
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(finished_run / "run_config.yaml", lone / "run_config.yaml")
    result = run_cli("eval", str(lone), "--set", "data.eval_ratio=0.1")
    assert result.returncode != 0
    assert f"{lone}: no model here" in _one_error(result)


def test_a_config_that_is_not_utf8_is_one_message(tmp_path: Path) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"model:\n  architecture: decoder\n# caf\xe9\n")
    result = run_cli("validate", str(config))
    assert result.returncode == 2
    assert _one_error(result) == (
        f"error: {config}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    )


def _background(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune.cli", *args],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_runs_started_at_once_on_one_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*SHORT, "--set", "logging.steps=1", "--set", f"output.dir={out}"]
    runs = [_background("train", *args) for _ in range(2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    loser = next(err for code, _, err in results if code == 2)
    assert "is in use by another run (pid " in loser, loser[-2000:]
    # The winner's run alone: every step logged once
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]


def test_overwrite_refuses_a_directory_a_live_run_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    live = _background(
        "train", *QUICK, "--set", "train.max_steps=100000", "--set", f"output.dir={out}"
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "checkpoint-1" / CHECKPOINT_MANIFEST).exists():
            assert live.poll() is None and time.monotonic() < deadline, live.communicate()[1]
            time.sleep(0.1)
        result = run_cli("train", *SHORT, "--set", f"output.dir={out}", "--overwrite")
        assert result.returncode == 2
        assert "is in use by another run (pid " in _one_error(result)
        assert live.poll() is None and (out / "run_config.yaml").is_file()
    finally:
        live.kill()
        live.communicate()
    # The kernel releases the lock of a killed run: --overwrite now replaces it
    result = run_cli("train", *SHORT, "--set", f"output.dir={out}", "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "expected"),
    [
        (
            "latin1.jsonl",
            b'{"prompt": "caf\xe9", "completion": "x"}\n',
            "completion",
            "latin1.jsonl:1: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        ),
        (
            "latin1.txt",
            b"first line\ncaf\xe9 au lait\n",
            "text",
            "latin1.txt:2: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        ),
        (
            "broken.parquet",
            b"PAR1 not really",
            "completion",
            "broken.parquet: cannot be read as parquet: ",
        ),
    ],
    ids=["jsonl", "txt", "parquet"],
)
def test_unreadable_data_is_one_message(
    tmp_path: Path, name: str, content: bytes, fmt: str, expected: str
) -> None:
    data = tmp_path / name
    data.write_bytes(content)
    source = f"data.train=[{{path: {data}, format: {{type: {fmt}}}}}]"
    result = run_cli("preprocess", *QUICK, "--set", source)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_an_output_dir_that_is_a_file_is_one_message(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine")
    result = run_cli("train", *QUICK, "--set", f"output.dir={target}")
    assert result.returncode == 2
    assert "exists and is not a directory" in _one_error(result)
    assert target.read_text() == "mine"


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda out: (out / "config.json").write_text('{"model_type": "deco'),
            "config.json' is not a valid JSON file",
        ),
        (
            lambda out: (out / "model.safetensors").write_bytes(
                (out / "model.safetensors").read_bytes()[:100_000]
            ),
            "Error while deserializing header",
        ),
    ],
    ids=["config", "weights"],
)
def test_generate_from_a_damaged_model_is_one_message(
    finished_run: Path, tmp_path: Path, damage, expected: str
) -> None:
    out = _copy(finished_run, tmp_path)
    damage(out)
    result = run_cli("generate", str(out), "--prompt", "What number comes after 4?")
    assert result.returncode == 1
    message = _one_error(result)
    assert message.startswith(f"error: {out}: the saved model cannot be loaded: ")
    assert expected in message


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "generate", str(tmp_path), "--prompt", "x")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "no model here" in result.stderr


def _honour_permissions() -> list[str]:
    """A command prefix under which permission bits apply: root bypasses them, so as root
    the CLI runs without the capabilities that do (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("as root, permission tests need setpriv (util-linux) to drop CAP_DAC_*")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_an_unreadable_data_file_is_one_message(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    shutil.copy(REPO / "finetune/resources/arithmetic/train.jsonl", data)
    data.chmod(0)
    source = f"data.train=[{{path: {data}, format: completion}}]"
    result = run_cli(
        "preprocess",
        *QUICK,
        *("--set", source),
        prefix=_honour_permissions(),
        FINETUNE_CACHE=str(tmp_path / "cache"),
    )
    assert result.returncode == 74
    assert _one_error(result) == f"error: {data}: permission denied"


def test_an_output_dir_that_cannot_be_created_is_one_message(tmp_path: Path) -> None:
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    result = run_cli(
        "train", *QUICK, "--set", f"output.dir={parent / 'out'}", prefix=_honour_permissions()
    )
    assert result.returncode == 2
    assert "output.dir: cannot create the lock file" in _one_error(result)
    assert "Permission denied" in result.stderr
    assert list(parent.iterdir()) == []


def test_unreadable_or_unwritable_checkpoints_keep_the_run(
    finished_run: Path, tmp_path: Path
) -> None:
    """A resume that cannot read its checkpoint, or cannot write new ones, says which file
    and leaves the finished run's model and checkpoints as they were."""
    out = _copy(finished_run, tmp_path)
    further = [*SHORT, "--set", f"output.dir={out}", "--set", "train.max_steps=6", "--resume"]
    before = _snapshot(out)
    optimizer = out / "checkpoints" / "checkpoint-4" / "optimizer.pt"
    optimizer.chmod(0)
    result = run_cli("train", *further, prefix=_honour_permissions())
    assert result.returncode == 74
    assert _one_error(result) == f"error: {optimizer}: permission denied"
    optimizer.chmod(0o644)
    assert _snapshot(out) == before

    (out / "checkpoints").chmod(0o555)
    try:
        result = run_cli("train", *further, prefix=_honour_permissions())
    finally:
        (out / "checkpoints").chmod(0o755)
    assert result.returncode == 74
    assert _one_error(result).endswith("checkpoint-6: permission denied")

    # The resume rewrote its run files (run_config.yaml with the new max_steps, the
    # tokenizer, metrics); the model and the checkpoints are as they were
    def model_and_checkpoints(files: dict[str, bytes]) -> dict[str, bytes]:
        keep = ("config.json", "model.safetensors", "run_info.json", "checkpoints/")
        return {name: data for name, data in files.items() if name.startswith(keep)}

    assert model_and_checkpoints(_snapshot(out)) == model_and_checkpoints(before)
