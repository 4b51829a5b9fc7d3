"""Generate the shipped quickstart dataset: small number tasks with checkable answers.

Each row is a prompt/completion pair (plus `text`, the two joined, for plain language
modelling). The tasks need a rule, not memorisation, so the held-out rows test whether
the model learned it: what follows or precedes a number, and the larger or smaller of two.

    python scripts/make_quickstart_data.py  # rewrites finetune/resources/arithmetic/
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "finetune" / "resources" / "arithmetic"


def make_row(rng: random.Random) -> dict[str, str]:
    """One random task: a prompt ending in ' Answer:', its completion, and the task name."""
    # Three-digit numbers throughout: a few million parameters learn the rules in minutes.
    a, b = rng.sample(range(100, 999), 2)
    task = rng.choice(["next", "previous", "larger", "smaller"])
    if task == "next":
        prompt, answer = f"What number comes after {a}?", a + 1
    elif task == "previous":
        prompt, answer = f"What number comes before {a}?", a - 1
    elif task == "larger":
        prompt, answer = f"Which is larger, {a} or {b}?", max(a, b)
    else:
        prompt, answer = f"Which is smaller, {a} or {b}?", min(a, b)
    prompt = f"Question: {prompt} Answer:"
    completion = f" {answer}"
    # `task` doubles as a class label for the sequence-classification example.
    return {"prompt": prompt, "completion": completion, "text": prompt + completion, "task": task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20000, help="training rows")
    parser.add_argument("--eval", type=int, default=500, help="held-out rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    held_out: dict[str, dict[str, str]] = {}
    while len(held_out) < args.eval:
        row = make_row(rng)
        held_out.setdefault(row["prompt"], row)
    # Training rows may repeat (there are only 898 "after"/"before" questions), but never
    # one of the held-out prompts; the four tasks stay equally frequent.
    train = []
    while len(train) < args.train:
        row = make_row(rng)
        if row["prompt"] not in held_out:
            train.append(row)
    held_out_rows = list(held_out.values())
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", held_out_rows)):
        with (args.out / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"wrote {len(rows)} rows to {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
