"""The framework's overhead per objective: the same job through `finetune` and through TRL's
trainer used directly, side by side in one run.

For each objective (dpo: DPOTrainer, kto: KTOTrainer, reward: RewardTrainer, grpo:
GRPOTrainer), two jobs train SmolLM2-135M-Instruct with the same LoRA adapter (r=16, all
linear layers), fp32, no gradient checkpointing, the same batch, learning rate and seed, on
the shipped number tasks (preference pairs, feedback rows, prompts). One job is `finetune`
as `finetune train` builds it from a config; the other is the TRL trainer given the same
model, a `datasets` table of the same text rows and its own tokenization. Each job runs in
its own process (its own peak RSS), and the two take their optimizer steps in lockstep, in
rotating order (see bench_methods.run_lockstep), so drifting machine load slows both alike.

It prints per objective the median seconds per optimizer step (after a warm-up step) of
each job, their ratio (finetune / TRL: the overhead; the target is <= 1.05), and each
process's peak RSS. GRPO samples its completions, so its steps vary more than the others'.
Run from the repo root (about 10 minutes on 2 busy cores):

    python scripts/bench_objectives.py
    python scripts/bench_objectives.py --objectives dpo --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

# Runnable as a script from the repo root without installing the package
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_methods import peak_rss_mb, run_lockstep  # noqa: E402

ARITHMETIC = REPO / "finetune" / "resources" / "arithmetic"
OBJECTIVES = ("dpo", "kto", "reward", "grpo")
DATA = {
    "dpo": (ARITHMETIC / "preference_train.jsonl", "preference"),
    "kto": (ARITHMETIC / "feedback_train.jsonl", "feedback"),
    "reward": (ARITHMETIC / "preference_train.jsonl", "preference"),
    "grpo": (ARITHMETIC / "train.jsonl", "prompt"),
}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
NUM_GENERATIONS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="converted SmolLM2 (default: convert/cache)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=6, help="measured steps per job")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


class StepClock(TrainerCallback):
    """Wait for the parent's go before each optimizer step; report each step's seconds."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.start = conn, 0.0

    def _wait(self) -> None:
        message = self.conn.recv()
        assert message == "go", message
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self._wait()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.conn.send({"seconds": time.perf_counter() - self.start})
        if state.global_step < state.max_steps:
            self._wait()


# --------------------------------------------------------------------------------------
# the two jobs
# --------------------------------------------------------------------------------------


def finetune_job(conn: Any, config: Path) -> None:
    """The job as `finetune train` builds it."""
    import logging

    from finetune.config import load_config
    from finetune.train.runner import prepare_run

    logging.disable(logging.WARNING)
    run = prepare_run(load_config(config), overwrite=True, callbacks=[StepClock(conn)])
    conn.send({"ready": True})
    run.trainer.train()
    conn.send({"done": True, "peak_rss_mb": peak_rss_mb()})


def exact_answer(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """GRPO's reward on the TRL side: the same exact match as finetune's built-in one."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]


def trl_job(conn: Any, objective: str, model_dir: str, settings: dict) -> None:
    """The same job through TRL's trainer, given the text rows and the model."""
    import torch
    import trl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path, _ = DATA[objective]
    rows = load_dataset("json", data_files=str(path), split="train")
    common = {
        "output_dir": settings["output_dir"],
        "per_device_train_batch_size": settings["batch_size"],
        "max_steps": settings["max_steps"],
        "learning_rate": settings["lr"],
        "seed": settings["seed"],
        # Explicit: TRL defaults to bf16 and gradient checkpointing; these jobs are fp32
        # without it, as finetune's defaults
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1000,
        "disable_tqdm": True,
    }
    task = "SEQ_CLS" if objective == "reward" else "CAUSAL_LM"
    options: dict[str, Any] = {}
    if objective == "dpo":
        trainer_class, config = (
            trl.DPOTrainer,
            trl.DPOConfig(**common, max_length=settings["max_length"], beta=0.1),
        )
    elif objective == "kto":
        trainer_class, config = (
            trl.KTOTrainer,
            trl.KTOConfig(**common, max_length=settings["max_length"], beta=0.1),
        )
    elif objective == "reward":
        trainer_class, config = (
            trl.RewardTrainer,
            trl.RewardConfig(**common, max_length=settings["max_length"]),
        )
    else:
        rows = rows.rename_column("completion", "answer")  # TRL keeps `completion` to itself
        trainer_class, config = (
            trl.GRPOTrainer,
            trl.GRPOConfig(
                **common,
                num_generations=NUM_GENERATIONS,
                max_completion_length=settings["max_completion_length"],
            ),
        )
        options["reward_funcs"] = [exact_answer]
    torch.manual_seed(settings["seed"])
    if objective == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(task_type=task, **LORA),
        callbacks=[StepClock(conn)],
        **options,
    )
    conn.send({"ready": True})
    trainer.train()
    conn.send({"done": True, "peak_rss_mb": peak_rss_mb()})


def finetune_config(objective: str, model: Path, settings: dict, tmp: Path) -> Path:
    path, data_format = DATA[objective]
    spec: dict[str, Any] = {"type": objective}
    if objective == "grpo":
        spec |= {
            "num_generations": NUM_GENERATIONS,
            "max_completion_length": settings["max_completion_length"],
            "rewards": [{"type": "exact_match", "column": "completion"}],
        }
    cfg = {
        "model": {"name_or_path": str(model)},
        "data": {
            "train": [{"path": str(path), "format": data_format}],
            "max_length": settings["max_length"],
            "cache_dir": str(tmp / "cache"),
        },
        "method": {
            "type": "lora",
            "rank": LORA["r"],
            "alpha": LORA["lora_alpha"],
            "dropout": LORA["lora_dropout"],
            "target_modules": LORA["target_modules"],
        },
        "objective": spec,
        "train": {
            "max_steps": settings["max_steps"],
            "micro_batch_size": settings["batch_size"],
            "lr": settings["lr"],
            "lr_scheduler": "linear",
            "seed": settings["seed"],
        },
        "logging": {"steps": 1000, "report_to": []},
        "output": {"dir": str(tmp / f"finetune-{objective}")},
    }
    out = tmp / f"{objective}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def bench(args: argparse.Namespace, model: Path, tmp: Path) -> dict[str, dict]:
    results = {}
    for objective in args.objectives:
        settings = {
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "max_completion_length": 8,
            "max_steps": args.steps + 1,  # the first is a warm-up
            "lr": 1e-5,
            "seed": 0,
            "output_dir": str(tmp / f"trl-{objective}"),
        }
        print(f"{objective}:", file=sys.stderr, flush=True)
        config = finetune_config(objective, model, settings, tmp)
        results[objective] = run_lockstep(
            {
                "trl": (trl_job, (objective, str(model), settings)),
                "finetune": (finetune_job, (config,)),
            },
            settings["max_steps"],
        )
    return results


def step_seconds(job: dict, warmup: int = 1) -> float:
    return statistics.median(s["seconds"] for s in job["steps"][warmup:])


def table(results: dict[str, dict]) -> str:
    lines = [
        "| objective | TRL s/step | finetune s/step | finetune / TRL | TRL peak RSS | "
        "finetune peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for objective, jobs in results.items():
        trl, ours = step_seconds(jobs["trl"]), step_seconds(jobs["finetune"])
        lines.append(
            f"| {objective} | {trl:.3f} | {ours:.3f} | {ours / trl:.2f}x | "
            f"{jobs['trl']['peak_rss_mb']:.0f} MB | {jobs['finetune']['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.model is None:
        from convert_smollm2 import ensure_smollm2

        args.model = ensure_smollm2()
    with tempfile.TemporaryDirectory(prefix="bench_objectives.") as tmp:
        results = bench(args, args.model, Path(tmp))
    print(f"\n{table(results)}\n")
    for objective, jobs in results.items():
        ratio = step_seconds(jobs["finetune"]) / step_seconds(jobs["trl"])
        verdict = "PASS" if ratio <= 1.05 else "FAIL"
        print(f"- {verdict}: {objective} overhead <= 1.05x ({ratio:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
