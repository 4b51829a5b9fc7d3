"""The README's first command: the shipped quickstart config meets its bar (at half its steps)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

QUICKSTART = REPO / "configs" / "examples" / "quickstart.yaml"
QUICKSTART_TEST_STEPS = 1000


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    out = tmp_path_factory.mktemp("quickstart") / "out"
    start = time.monotonic()
    # Half the shipped schedule, to keep CI short: measured at 1000 steps exact match is
    # 0.65 to 0.78 (it depends on the CPU's kernels; the shipped 2000 steps reach about
    # 0.96), clear of the 0.5 bar.
    result = run_cli(
        "train",
        str(QUICKSTART),
        *("--set", f"output.dir={out}", "--set", f"train.max_steps={QUICKSTART_TEST_STEPS}"),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout, time.monotonic() - start


def test_quickstart_meets_its_bar(quickstart: tuple[Path, str, float]) -> None:
    out, stdout, seconds = quickstart
    info = json.loads((out / "run_info.json").read_text())
    trained, untrained = info["metrics"], info["untrained_metrics"]
    print(f"quickstart: {seconds:.0f} s, {trained} vs untrained {untrained}")
    assert trained["eval_loss"] <= 0.5 * untrained["untrained_loss"]
    assert untrained["untrained_exact_match"] <= 0.05
    assert trained["exact_match"] >= 0.5
    # The report a user reads at the end of the run.
    assert "held-out evaluation" in stdout and "exact match" in stdout


def test_eval_command_reproduces_the_final_evaluation(quickstart: tuple[Path, str, float]) -> None:
    out, _, _ = quickstart
    result = run_cli("eval", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    info = json.loads((out / "run_info.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(info["metrics"]["eval_loss"], abs=1e-5)
    assert metrics["exact_match"] == pytest.approx(info["metrics"]["exact_match"])


def test_generate_answers_a_held_out_question(quickstart: tuple[Path, str, float]) -> None:
    out, _, _ = quickstart
    rows = [json.loads(line) for line in (REPO / "finetune/resources/arithmetic/eval.jsonl").open()]
    single = run_cli("generate", str(out), "--prompt", rows[0]["prompt"], "--max-new-tokens", "6")
    assert single.returncode == 0, single.stderr[-2000:]
    # Several prompts: the model loads once, one JSON line per prompt, in order
    rows = rows[:20]
    prompts = [arg for row in rows for arg in ("--prompt", row["prompt"])]
    result = run_cli("generate", str(out), *prompts, "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == [row["prompt"] for row in rows]
    assert lines[0]["text"].strip() == single.stdout.strip()
    answered = sum(
        line["text"].strip() == row["completion"].strip()
        for line, row in zip(lines, rows, strict=True)
    )
    # Exact match over all 200 rows is >= 0.5 (0.65 to 0.78 measured, by CPU): the greedy
    # answers of these 20 agree, with room for rows that happen to be hard.
    assert answered >= 6


def test_sampling_options_run(quickstart: tuple[Path, str, float]) -> None:
    out, _, _ = quickstart
    result = run_cli(
        "generate",
        str(out),
        "--prompt",
        "Question:",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "1",
        "--max-new-tokens",
        "8",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
