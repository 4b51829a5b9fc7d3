"""Step time and peak memory of each parallel mode next to one process, and `finetune
estimate` next to the measured memory of each ZeRO stage.

One Llama-style model (hidden 512, 8 layers, GQA 8/4, vocabulary 512: about 24M
parameters), trained on the shipped number tasks with the same global batch (16 rows of up to
64 tokens) in every mode:

    single          one process (all cores)
    zero0..zero3    2 ranks, 8 rows each (ZeRO-3 with stage3_param_persistence_threshold 0)
    tensor2         2 ranks of tensor parallel (AutoTP), 16 rows
    pipeline2       2 pipeline stages, 2 micro-batches of 8 rows

Every mode runs ROUNDS times in rotating order, so a machine whose load drifts slows every
mode alike; a mode's step time is the median of its per-step wall times after WARMUP steps
(from metrics.jsonl), and the table gives it as a ratio to the single process's. Memory is
the per-rank peak that run_info.json records (GPU: max allocated; CPU: peak RSS, which also
holds the libraries and activations), next to DeepSpeed's estimate of the model states per
GPU (16-bit mixed precision, as DeepSpeed's estimators assume) for the same stage, and the
parameter elements each rank holds after its first step (its ZeRO-3 shards under ZeRO-3).
On CPU the ranks use gloo and one thread each, the single process all cores.

    python scripts/bench_distributed.py                 # about 8 minutes on 2 cores
    python scripts/bench_distributed.py --rounds 1 --steps 6   # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "finetune" / "resources" / "arithmetic" / "train.jsonl"
GLOBAL_BATCH = 16
MODEL = {
    "architecture": "llama",
    "config": {
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
    },
}
ZERO3 = {
    "zero_optimization": {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
}
# mode: (ranks, distributed section, micro-batch, accumulation)
MODES: dict[str, tuple[int, dict[str, Any], int, int]] = {
    "single": (1, {}, GLOBAL_BATCH, 1),
    "zero0": (2, {"zero_stage": 0}, GLOBAL_BATCH // 2, 1),
    "zero1": (2, {"zero_stage": 1}, GLOBAL_BATCH // 2, 1),
    "zero2": (2, {"zero_stage": 2}, GLOBAL_BATCH // 2, 1),
    "zero3": (2, {"deepspeed": "ZERO3"}, GLOBAL_BATCH // 2, 1),
    "tensor2": (2, {"tensor_parallel": 2}, GLOBAL_BATCH, 1),
    "pipeline2": (2, {"pipeline_stages": 2}, GLOBAL_BATCH // 2, 2),
}
STAGE_OF = {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if "single" not in args.modes:
        parser.error("--modes must include single (the baseline)")

    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        root = Path(tmp)
        (root / "zero3.json").write_text(json.dumps(ZERO3))
        step_times: dict[str, list[float]] = {mode: [] for mode in args.modes}
        peaks: dict[str, list[float]] = {}
        held: dict[str, list[int] | None] = {}
        for round_ in range(args.rounds):
            shift = round_ % len(args.modes)
            for mode in args.modes[shift:] + args.modes[:shift]:
                info, times = run_mode(root / f"{mode}-{round_}", mode, args.steps, root)
                step_times[mode] += times[args.warmup :]
                peaks[mode] = info["peak_memory_mb_per_rank"]
                ranks = info.get("parameters_held_per_rank")  # the pipeline loop has none
                held[mode] = [r["numel"] or r["shard_numel"] for r in ranks] if ranks else None
                print(f"{mode} round {round_}: {statistics.median(times):.3f} s/step", flush=True)
        estimates = zero_estimates(root)

    base = statistics.median(step_times["single"])
    results = []
    for mode in args.modes:
        median = statistics.median(step_times[mode])
        results.append(
            {
                "mode": mode,
                "ranks": MODES[mode][0],
                "step_time_ratio": round(median / base, 2),
                "step_time_s": round(median, 4),
                "peak_memory_mb_per_rank": peaks[mode],
                "parameters_held_per_rank": held[mode],
                "estimate_mb_per_gpu": estimates.get(STAGE_OF.get(mode)),
            }
        )
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def run_mode(work: Path, mode: str, steps: int, root: Path) -> tuple[dict, list[float]]:
    """Train `steps` steps in `mode`; return run_info.json and the per-step wall times."""
    ranks, distributed, micro, accumulation = MODES[mode]
    if distributed.get("deepspeed") == "ZERO3":
        distributed = {"deepspeed": str(root / "zero3.json")}
    work.mkdir(parents=True)
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(work, distributed, micro, accumulation, steps)))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if ranks == 1:
        command = [sys.executable, "-m", "finetune.cli", "train", str(config)]
    else:
        port = free_port()
        command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(port)]
        command += ["--module", "finetune.cli", "train", str(config)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{mode} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    out = work / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [row["elapsed_s"] for row in rows if "loss" in row]
    times = [b - a for a, b in itertools.pairwise(elapsed)]
    return json.loads((out / "run_info.json").read_text()), times


def run_config(
    work: Path, distributed: dict, micro: int, accumulation: int, steps: int
) -> dict[str, Any]:
    return {
        "model": MODEL,
        "tokenizer": {"train": {"vocab_size": 512}},
        "data": {
            "train": [{"path": str(DATA), "format": {"type": "completion"}}],
            "max_length": 64,
            "cache_dir": str(work.parent / "cache"),
        },
        "train": {
            "max_steps": steps,
            "micro_batch_size": micro,
            "gradient_accumulation_steps": accumulation,
            "lr": 1e-3,
        },
        "logging": {"steps": 1, "report_to": []},
        "output": {"dir": str(work / "out")},
        **({"distributed": distributed} if distributed else {}),
    }


def zero_estimates(root: Path) -> dict[int, float]:
    """DeepSpeed's model-state estimate per GPU (MiB) for each ZeRO stage, 2 GPUs, no
    offload, for the benchmark's model."""
    from finetune.config.schema import RunConfig
    from finetune.distributed.estimate import estimate_stages, meta_model, parameter_counts

    cfg = RunConfig.model_validate(run_config(root / "estimate", {}, GLOBAL_BATCH, 1, 1))
    total, largest = parameter_counts(meta_model(cfg))
    rows = estimate_stages(total, largest, gpus_per_node=2, nodes=1)
    return {r.stage: round(r.gpu_per_rank / 2**20, 1) for r in rows if r.offload == "none"}


def print_table(results: list[dict]) -> None:
    print()
    print(
        "| mode | ranks | step time vs single | estimate MiB/GPU | peak MiB per rank "
        "| parameters held per rank (M) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        estimate = "-" if r["estimate_mb_per_gpu"] is None else f"{r['estimate_mb_per_gpu']:.0f}"
        peaks = " / ".join(f"{p:.0f}" for p in r["peak_memory_mb_per_rank"])
        held = r["parameters_held_per_rank"]
        held = "-" if held is None else " / ".join(f"{n / 1e6:.1f}" for n in held)
        print(
            f"| {r['mode']} | {r['ranks']} | {r['step_time_ratio']:.2f} | {estimate} "
            f"| {peaks} | {held} |"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
