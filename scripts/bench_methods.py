"""Benchmark full fine-tuning, LoRA and QLoRA on SmolLM2-135M, then race finetune's LoRA
against TRL's SFTTrainer on variable-length chats.

Part 1, methods: full, LoRA (r=16, all-linear) and QLoRA (4-bit NF4 base, same adapters),
built by `finetune` from configs/examples/smollm2-lora.yaml / smollm2-qlora.yaml, on the
shipped number tasks packed into rows of the same length, at the same batch size:

- trainable parameters (4-bit weights counted unpacked),
- model-state bytes after the steps: parameters as stored (4-bit weights with their
  quantization constants), gradients (measured before the optimizer step) and optimizer
  state, counted from the tensors,
- peak RSS of the process (for information: it also holds the libraries, activations and
  the fp32 checkpoint QLoRA quantizes from),
- training tokens/s, as a ratio to full fine-tuning,
- held-out loss before and after the short run.

Part 2, the race: the same LoRA job on a variable-length chat set (the number tasks
rendered as conversations of 1 to 24 turns, log-uniformly, like the long tail of real chat
data), micro-batch 4, max length 512, fp32, through TRL's SFTTrainer with its default
padding (each batch padded to its longest conversation) and through `finetune` with what
a user gets from the example config (`data.packing: true`: rows of up to 512 tokens, no
padding). Both report real (non-padding) tokens per second.

Every job runs in its own process (its own peak RSS); the processes take their optimizer
steps in lockstep, one at a time and in rotating order, so a machine whose load drifts
(shared CPUs) slows every job alike. Speeds are medians over the measured steps after a
warm-up step. Run from the repo root (about 12 minutes on 2 busy cores):

    python scripts/bench_methods.py
    python scripts/bench_methods.py --steps 3 --race-steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

# Runnable as a script from the repo root without installing the package
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARITHMETIC = REPO / "finetune" / "resources" / "arithmetic"
LORA_CONFIG = REPO / "configs" / "examples" / "smollm2-lora.yaml"
QLORA_CONFIG = REPO / "configs" / "examples" / "smollm2-qlora.yaml"
METHODS = ("full", "lora", "qlora")
RACERS = ("trl", "finetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="converted SmolLM2 (default: convert/cache)")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per method")
    parser.add_argument("--seq-len", type=int, default=128, help="packed row length, methods")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-samples", type=int, default=64, help="held-out rows")
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--race-steps", type=int, default=3, help="measured steps per racer")
    parser.add_argument("--race-len", type=int, default=512, help="max length, race")
    parser.add_argument("--conversations", type=int, default=300, help="chats in the race set")
    parser.add_argument("--skip-methods", action="store_true")
    parser.add_argument("--skip-race", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------
# measuring inside a job process
# --------------------------------------------------------------------------------------


class Lockstep(TrainerCallback):
    """Wait for the parent's go before each optimizer step; report each step's seconds,
    and the model-state bytes at the last step."""

    def __init__(self, conn: Any, tokens: list[tuple[int, int]]) -> None:
        self.conn, self.tokens = conn, tokens
        self.grad_bytes = 0
        self.state_bytes: dict[str, int] = {}
        self.start = 0.0

    def _wait(self) -> None:
        message = self.conn.recv()
        assert message == "go", message
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.tokens.clear()  # drop the batches of the evaluation before training
        self._wait()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        self.grad_bytes = sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs) -> None:
        seconds = time.perf_counter() - self.start
        real, padded = self.tokens[state.global_step - 1]
        self.conn.send({"seconds": seconds, "real": real, "padded": padded})
        if state.global_step == state.max_steps:
            self.state_bytes = {
                "parameters": parameter_bytes(model),
                "gradients": self.grad_bytes,
                "optimizer": sum(
                    _nbytes(v)
                    for s in optimizer.state.values()
                    for v in s.values()
                    if isinstance(v, torch.Tensor)
                ),
            }
        else:
            self._wait()


class CountingCollator:
    """Wrap a collator; record (real tokens, padded positions) of every batch it makes.

    Real tokens are the samples' own lengths, so padding is never counted whatever the
    pad id (SmolLM2's pad is its end-of-turn token)."""

    def __init__(self, collator: Callable, tokens: list[tuple[int, int]]) -> None:
        self.collator, self.tokens = collator, tokens

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        batch = self.collator(items)
        samples = [s for item in items for s in (item if isinstance(item, list) else [item])]
        self.tokens.append((sum(len(s["input_ids"]) for s in samples), batch["input_ids"].numel()))
        return batch


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters as stored, 4-bit weights' quantization constants included."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        total += _nbytes(param)
        state = getattr(param, "quant_state", None)
        while state is not None:  # absmax (and, double-quantized, its own constants)
            for key in ("absmax", "code", "offset"):
                value = getattr(state, key, None)
                if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    total += _nbytes(value)
            state = getattr(state, "state2", None)
    return total


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def keep_4bit_training_layout(model: torch.nn.Module) -> None:
    """Work around bitsandbytes 0.50.2 on CPUs with AVX512-BF16: a no-grad eval-mode
    forward (the evaluation before training) repacks each 4-bit weight for CPU inference
    for good, and training forwards then run a kernel without autograd, so no gradient
    flows back through the base layers and QLoRA barely learns. Without the repacking the
    layers keep the layout they train with. (Belongs in finetune.methods; see the report.)
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def finetune_job(conn: Any, config: Path, overrides: list[str], evaluate: bool) -> None:
    """A `finetune` run built exactly as `finetune train` builds it, stepped in lockstep."""
    import logging

    from finetune.config import load_config
    from finetune.train.runner import prepare_run

    logging.disable(logging.WARNING)
    tokens: list[tuple[int, int]] = []
    lockstep = Lockstep(conn, tokens)
    run = prepare_run(load_config(config, overrides), overwrite=True, callbacks=[lockstep])
    trainer = run.trainer
    trainer.data_collator = CountingCollator(trainer.data_collator, tokens)
    keep_4bit_training_layout(trainer.model)
    before = trainer.evaluate()["eval_loss"] if evaluate else None
    conn.send({"ready": True})
    trainer.train()
    after = trainer.evaluate()["eval_loss"] if evaluate else None
    conn.send(
        {
            "done": True,
            "trainable": run.parameters[0],
            "total": run.parameters[1],
            "state_bytes": lockstep.state_bytes,
            "eval_before": before,
            "eval_after": after,
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def trl_job(conn: Any, model_dir: str, data: str, lora: dict, train: dict) -> None:
    """The same LoRA job through TRL's SFTTrainer with its default padding collator."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokens: list[tuple[int, int]] = []
    lockstep = Lockstep(conn, tokens)
    args = SFTConfig(
        output_dir=train["output_dir"],
        per_device_train_batch_size=train["batch_size"],
        max_length=train["max_length"],
        max_steps=train["max_steps"],
        learning_rate=train["lr"],
        lr_scheduler_type=train["lr_scheduler"],
        warmup_steps=train["warmup_steps"],
        seed=train["seed"],
        # Explicit: TRL defaults to bf16 (about 100x slower matmuls on these CPUs) and to
        # gradient checkpointing; finetune's defaults are fp32 without checkpointing.
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
    )
    torch.manual_seed(train["seed"])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=args,
        train_dataset=load_dataset("json", data_files=data, split="train"),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(task_type="CAUSAL_LM", **lora),
        callbacks=[lockstep],
    )
    trainer.data_collator = CountingCollator(trainer.data_collator, tokens)
    conn.send({"ready": True})
    trainer.train()
    conn.send({"done": True, "peak_rss_mb": peak_rss_mb()})


# --------------------------------------------------------------------------------------
# the parent: start jobs, step them in turn
# --------------------------------------------------------------------------------------


def run_lockstep(jobs: dict[str, tuple[Callable, tuple]], steps: int) -> dict[str, dict]:
    """Start every job in its own process; once all are ready, give each in turn (rotating
    who goes first) one optimizer step at a time, `steps` times. Returns per job its final
    report plus `steps`: the per-step measurements."""
    ctx = mp.get_context("spawn")
    conns, procs = {}, {}
    for name, (target, args) in jobs.items():
        parent, child = ctx.Pipe()
        procs[name] = ctx.Process(target=target, args=(child, *args), name=name)
        procs[name].start()
        child.close()  # so that a job that dies shows as EOFError, not a hang
        conns[name] = parent
    for name in conns:
        _expect(conns, name, "ready")
    results: dict[str, dict] = {name: {"steps": []} for name in jobs}
    names = list(jobs)
    for step in range(steps):
        for name in names[step % len(names) :] + names[: step % len(names)]:
            conns[name].send("go")
            results[name]["steps"].append(_expect(conns, name, "seconds"))
        done = ", ".join(f"{n} {results[n]['steps'][-1]['seconds']:.1f}s" for n in names)
        print(f"  step {step + 1}/{steps}: {done}", file=sys.stderr, flush=True)
    for name in conns:
        results[name].update(_expect(conns, name, "done"))
        procs[name].join()
    return results


def _expect(conns: dict[str, Any], name: str, key: str) -> dict:
    """The next message from job `name`, which must hold `key`."""
    try:
        message = conns[name].recv()
    except EOFError:
        message = None
    if not isinstance(message, dict) or key not in message:
        for conn in conns.values():
            conn.close()  # the other jobs see EOFError and exit
        raise RuntimeError(f"job {name} failed; see its traceback above")
    return message


def tokens_per_second(steps: list[dict], warmup: int = 1) -> float:
    """Median over the measured steps of real tokens / step seconds."""
    return statistics.median(s["real"] / s["seconds"] for s in steps[warmup:])


# --------------------------------------------------------------------------------------
# part 1: methods
# --------------------------------------------------------------------------------------


def bench_methods(args: argparse.Namespace, model: Path, tmp: Path) -> dict[str, dict]:
    evaluation = f"[{{path: {ARITHMETIC / 'eval.jsonl'}, format: completion, samples: "
    common = [
        f"model.name_or_path={model}",
        f"data.max_length={args.seq_len}",
        "data.packing=true",  # every step sees batch-size rows of seq-len positions
        f"data.eval={evaluation}{args.eval_samples}}}]",
        f"train.micro_batch_size={args.batch_size}",
        f"train.max_steps={args.steps + 1}",
        "train.warmup_steps=0",
        "train.lr_scheduler=constant",
        "train.eval_steps=null",
        "train.eval_untrained=false",
        "train.exact_match_rows=0",
        "logging.report_to=[]",
        "logging.steps=1000",
    ]
    jobs = {
        "full": (LORA_CONFIG, ["method={type: full}", f"train.lr={args.full_lr}"]),
        "lora": (LORA_CONFIG, []),
        "qlora": (QLORA_CONFIG, []),
    }
    return run_lockstep(
        {
            name: (finetune_job, (config, [*common, *extra, f"output.dir={tmp / name}"], True))
            for name, (config, extra) in jobs.items()
        },
        args.steps + 1,
    )


def methods_table(results: dict[str, dict]) -> str:
    full_speed = tokens_per_second(results["full"]["steps"])
    lora_state = sum(results["lora"]["state_bytes"].values())
    lines = [
        "| method | trainable params | % | params MB | grads MB | optimizer MB | "
        "model state MB | vs LoRA | peak RSS MB | tokens/s | vs full | eval loss before "
        "-> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        state = r["state_bytes"]
        total = sum(state.values())
        speed = tokens_per_second(r["steps"])
        lines.append(
            f"| {name} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f} | "
            f"{state['parameters'] / 2**20:.0f} | {state['gradients'] / 2**20:.0f} | "
            f"{state['optimizer'] / 2**20:.0f} | {total / 2**20:.0f} | "
            f"{total / lora_state:.2f} | {r['peak_rss_mb']:.0f} | {speed:.0f} | "
            f"{speed / full_speed:.2f} | {r['eval_before']:.3f} -> {r['eval_after']:.3f} |"
        )
    return "\n".join(lines)


def methods_checks(results: dict[str, dict]) -> list[tuple[str, bool]]:
    lora, qlora = results["lora"], results["qlora"]
    return [
        ("LoRA trains < 5% of parameters", lora["trainable"] < 0.05 * lora["total"]),
        (
            "QLoRA model state <= half of fp32 LoRA's",
            sum(qlora["state_bytes"].values()) <= 0.5 * sum(lora["state_bytes"].values()),
        ),
        (
            "eval loss improves under every method",
            all(r["eval_after"] < r["eval_before"] for r in results.values()),
        ),
    ]


# --------------------------------------------------------------------------------------
# part 2: the race
# --------------------------------------------------------------------------------------


def write_chat_set(path: Path, conversations: int, seed: int = 0) -> Path:
    """Number-task conversations of 1 to 24 turns (log-uniform: many short, a long tail)."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in (ARITHMETIC / "train.jsonl").open()]
    with path.open("w") as out:
        for _ in range(conversations):
            turns = round(math.exp(rng.uniform(0, math.log(24))))
            messages = []
            for row in rng.sample(rows, turns):
                question = row["prompt"].removeprefix("Question: ").removesuffix(" Answer:")
                messages.append({"role": "user", "content": question})
                messages.append({"role": "assistant", "content": row["completion"].strip()})
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def bench_race(args: argparse.Namespace, model: Path, tmp: Path) -> dict[str, dict]:
    from finetune.config import load_config

    data = write_chat_set(tmp / "chats.jsonl", args.conversations)
    example = load_config(LORA_CONFIG)  # what a user gets: its method, lr, packing
    steps = args.race_steps + 1
    overrides = [
        f"model.name_or_path={model}",
        f"data.train=[{{path: {data}, format: chat}}]",
        "data.eval=[]",
        f"data.max_length={args.race_len}",
        f"train.micro_batch_size={args.batch_size}",
        f"train.max_steps={steps}",
        "train.eval_steps=null",
        "train.eval_untrained=false",
        "train.exact_match_rows=0",
        "logging.report_to=[]",
        "logging.steps=1000",
        f"output.dir={tmp / 'race-finetune'}",
    ]
    method = example.method
    lora = {
        "r": method.rank,
        "lora_alpha": method.alpha,
        "lora_dropout": method.dropout,
        "target_modules": method.target_modules,
    }
    train = {
        "output_dir": str(tmp / "race-trl"),
        "batch_size": args.batch_size,
        "max_length": args.race_len,
        "max_steps": steps,
        "lr": example.train.lr,
        "lr_scheduler": example.train.lr_scheduler,
        "warmup_steps": example.train.warmup_steps,
        "seed": example.train.seed,
    }
    results = run_lockstep(
        {
            "trl": (trl_job, (str(model), str(data), lora, train)),
            "finetune": (finetune_job, (LORA_CONFIG, overrides, False)),
        },
        steps,
    )
    results["finetune"]["packing"] = example.data.packing
    return results


def race_table(results: dict[str, dict]) -> str:
    lines = [
        "| job | real tokens/step | padded positions/step | padding | peak RSS MB | "
        "real tokens/s | vs TRL |",
        "|---|---|---|---|---|---|---|",
    ]
    trl_speed = tokens_per_second(results["trl"]["steps"])
    labels = {"trl": "TRL SFTTrainer (padding)", "finetune": "finetune (example config)"}
    for name, r in results.items():
        measured = r["steps"][1:]
        real = statistics.mean(s["real"] for s in measured)
        padded = statistics.mean(s["padded"] for s in measured)
        speed = tokens_per_second(r["steps"])
        lines.append(
            f"| {labels[name]} | {real:.0f} | {padded:.0f} | {100 * (1 - real / padded):.0f}% | "
            f"{r['peak_rss_mb']:.0f} | {speed:.1f} | {speed / trl_speed:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.model is None:
        from convert_smollm2 import ensure_smollm2

        args.model = ensure_smollm2()
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="bench_methods.") as tmp:
        if not args.skip_methods:
            print("methods: full, LoRA, QLoRA", file=sys.stderr)
            methods = bench_methods(args, args.model, Path(tmp))
            report["methods"] = methods
            print(f"\n{methods_table(methods)}\n")
            for check, ok in methods_checks(methods):
                print(f"- {'PASS' if ok else 'FAIL'}: {check}")
        if not args.skip_race:
            print("\nrace: TRL SFTTrainer vs finetune, LoRA", file=sys.stderr)
            race = bench_race(args, args.model, Path(tmp))
            report["race"] = race
            ratio = tokens_per_second(race["finetune"]["steps"]) / tokens_per_second(
                race["trl"]["steps"]
            )
            print(f"\n{race_table(race)}\n")
            print(f"- {'PASS' if ratio >= 2 else 'FAIL'}: finetune >= 2x TRL ({ratio:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
