"""Benchmark the project's decoder against transformers' Llama of identical shape and weights.

Measures, for both models in one run:

- training step (forward + backward) throughput in tokens/s,
- greedy generation throughput with the KV cache, in new tokens/s,
- peak memory of training steps: each model runs in a fresh subprocess that loads the saved
  checkpoint, resets the kernel's peak-RSS counter (/proc/self/clear_refs), runs the steps and
  reads the peak back (VmHWM), so the figure is the memory the steps added on top of the
  loaded model (tracemalloc cannot see torch's allocations).

Speed runs interleave the two models repeat by repeat (alternating which goes first) and
report medians, so a machine whose load drifts affects both alike. Run from the repo root:

    python scripts/bench_models.py            # default shape, about 2-3 minutes on 2 cores
    python scripts/bench_models.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Runnable as a script from the repo root without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig, LlamaForCausalLM

from finetune.models import FinetuneDecoderForCausalLM
from finetune.models.convert import decoder_from_hf

TARGET_RATIO = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=1408)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=11, help="interleaved repeats per measure")
    parser.add_argument("--memory-repeats", type=int, default=3, help="subprocesses per model")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="small shape, few repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # Internal: run one memory measurement in this (fresh) process
    parser.add_argument("--memory-worker", nargs=2, metavar=("KIND", "CHECKPOINT"))
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden_size, args.layers, args.intermediate_size = 128, 2, 352
        args.seq_len, args.new_tokens, args.repeats, args.memory_repeats = 64, 16, 3, 1
    return args


def build_pair(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """Llama and our decoder converted from it: same shape, same weights."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq_len, args.prompt_len + args.new_tokens),
        bos_token_id=None,
        eos_token_id=None,  # generation always runs the full number of new tokens
        attn_implementation=args.attn,
    )
    llama = LlamaForCausalLM(config)
    return {"llama": llama, "ours": decoder_from_hf(llama)}


def training_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    return {"input_ids": ids, "labels": ids}


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Seconds for one forward + backward; gradients are dropped afterwards."""
    start = time.perf_counter()
    model(**batch, use_cache=False).loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def generate(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds for greedy generation of exactly `new_tokens` tokens with the KV cache."""
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            use_cache=True,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return elapsed


def interleaved(
    models: dict[str, torch.nn.Module], measure, repeats: int
) -> dict[str, list[float]]:
    """Run `measure(model)` for each model, `repeats` times, alternating the order."""
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for name in names:  # warm-up, not recorded
        measure(models[name])
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(measure(models[name]))
    return times


def memory_worker(kind: str, checkpoint: str, args: argparse.Namespace) -> None:
    """Fresh process: load one model, run training steps, print the peak RSS they added."""
    model_class = LlamaForCausalLM if kind == "llama" else FinetuneDecoderForCausalLM
    model = model_class.from_pretrained(checkpoint, attn_implementation=args.attn).train()
    batch = training_batch(args)
    gc.collect()
    reset = reset_peak_rss()
    baseline = current_rss()
    for _ in range(2):
        train_step(model, batch)
    peak = peak_rss() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "delta": peak - baseline}))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} missing from /proc/self/status")


def current_rss() -> int:
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    return _status_bytes("VmHWM")


def measure_memory(models: dict[str, torch.nn.Module], args: argparse.Namespace) -> dict:
    """Median peak-RSS increase of training steps, one fresh subprocess per measurement."""
    results: dict[str, list[dict]] = {name: [] for name in models}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            model.save_pretrained(Path(tmp) / name)
        worker_args = [
            f"--hidden-size={args.hidden_size}",
            f"--vocab-size={args.vocab_size}",
            f"--batch-size={args.batch_size}",
            f"--seq-len={args.seq_len}",
            f"--attn={args.attn}",
        ] + ([f"--threads={args.threads}"] if args.threads else [])
        names = list(models)
        for repeat in range(args.memory_repeats):
            for name in names if repeat % 2 == 0 else reversed(names):
                command = [sys.executable, __file__, "--memory-worker", name, str(Path(tmp) / name)]
                done = subprocess.run(
                    command + worker_args, capture_output=True, text=True, check=True
                )
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        name: {key: statistics.median(r[key] for r in runs) for key in ("delta", "peak")}
        for name, runs in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(*args.memory_worker, args)
        return 0

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, attn={args.attn}; "
        f"shape: hidden {args.hidden_size}, {args.layers} layers, {args.heads} heads "
        f"({args.kv_heads} kv), ffn {args.intermediate_size}, vocab {args.vocab_size}"
    )
    models = build_pair(args)
    batch = training_batch(args)
    with torch.no_grad():
        same = torch.equal(models["llama"](**batch).logits, models["ours"](**batch).logits)
    print(f"identical logits before timing: {same}")

    for model in models.values():
        model.train()
    step_times = interleaved(models, lambda m: train_step(m, batch), args.repeats)
    for model in models.values():
        model.eval()
    prompt = batch["input_ids"][:1, : args.prompt_len]
    gen_times = interleaved(models, lambda m: generate(m, prompt, args.new_tokens), args.repeats)
    memory = measure_memory(models, args)

    step_tokens = args.batch_size * args.seq_len
    rows = {
        "train tokens/s": speed_row(step_times, step_tokens),
        "generate tokens/s": speed_row(gen_times, args.new_tokens),
        "train peak RSS added (MiB)": memory_row(memory, "delta"),
        "train peak RSS total (MiB)": memory_row(memory, "peak"),
    }
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **rows}))
    speeds = ("train tokens/s", "generate tokens/s")
    speed_ok = all(rows[k]["ratio"] >= TARGET_RATIO for k in speeds)
    return 0 if speed_ok else 1


def speed_row(times: dict[str, list[float]], tokens: int) -> dict[str, float]:
    """Median tokens/s of each model, the median of the per-repeat ratios, the best-run ratio.

    Repeat i of both models ran back to back, so the ratio within a repeat cancels the
    machine's slow load changes; its median is the headline figure. Other processes only ever
    add time, so the ratio of the fastest runs is a second, load-robust estimate.
    """
    paired = [llama / ours for llama, ours in zip(times["llama"], times["ours"], strict=True)]
    return {
        "llama": tokens / statistics.median(times["llama"]),
        "ours": tokens / statistics.median(times["ours"]),
        "ratio": statistics.median(paired),
        "best ratio": min(times["llama"]) / min(times["ours"]),
    }


def memory_row(memory: dict[str, dict[str, float]], key: str) -> dict[str, float]:
    llama, ours = memory["llama"][key] / 2**20, memory["ours"][key] / 2**20
    return {"llama": llama, "ours": ours, "ratio": ours / llama, "best ratio": float("nan")}


def print_table(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nmedians of {args.repeats} interleaved repeats "
        f"(memory: {args.memory_repeats} fresh subprocesses per model)"
    )
    print(f"{'measure':<28}{'llama':>10}{'ours':>10}{'ours/llama':>12}{'best runs':>11}")
    for measure, v in rows.items():
        best = "" if v["best ratio"] != v["best ratio"] else f"{v['best ratio']:.3f}"
        print(f"{measure:<28}{v['llama']:>10.1f}{v['ours']:>10.1f}{v['ratio']:>12.3f}{best:>11}")
    print(
        f"speed: ours/llama = median of per-repeat ratios (target >= {TARGET_RATIO}, higher is "
        "better), best runs = ratio of the fastest runs; memory: ratio of medians (lower is "
        f"better). Load average at the end: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
