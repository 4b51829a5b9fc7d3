"""Generate the shipped preference pairs from the quickstart's number tasks.

Each row keeps a quickstart prompt, its right answer as `chosen` and a near miss as
`rejected`: for "after"/"before" questions the question's own number, or the answer with
its tens or hundreds digit off by one; for "larger"/"smaller" ones the other number, the
answer's first digit followed by the other number's last two, or the answer off by one in
its last digit (the last two are the mistakes the quickstart model makes). The held-out
pairs come from the held-out quickstart rows, so their prompts were never trained on by
the quickstart model or by DPO.

The feedback rows (KTO's unpaired data) take the same training prompts, each with one
answer: the right one (label true) or a near miss (label false), half and half at random.

    python scripts/make_preference_data.py  # rewrites resources/arithmetic/{preference,feedback}_*
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "finetune" / "resources" / "arithmetic"
NUMBERS = re.compile(r"\d+")


def near_miss(row: dict[str, str], rng: random.Random) -> str:
    """A wrong answer that is close to the right one."""
    answer = int(row["completion"])
    if row["task"] in ("larger", "smaller"):
        a, b = (int(n) for n in NUMBERS.findall(row["prompt"]))
        other = a if answer == b else b
        blend = int(str(answer)[0] + str(other)[1:])
        misses = [m for m in (other, blend, answer + rng.choice([-1, 1])) if m != answer]
        return f" {rng.choice(misses)}"
    asked = int(NUMBERS.findall(row["prompt"])[0])
    miss = rng.choice([asked, answer - 10, answer + 10, answer - 100, answer + 100])
    return f" {miss if 0 <= miss <= 1099 else asked}"


def pairs(rows: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    out = []
    for row in rows:
        rejected = near_miss(row, rng)
        out.append({"prompt": row["prompt"], "chosen": row["completion"], "rejected": rejected})
    return out


def feedback(rows: list[dict[str, str]], rng: random.Random) -> list[dict[str, object]]:
    out = []
    for row in rows:
        good = rng.random() < 0.5
        answer = row["completion"] if good else near_miss(row, rng)
        out.append({"prompt": row["prompt"], "completion": answer, "label": good})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4000, help="training pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    read = lambda name: [json.loads(line) for line in (args.out / name).open()]  # noqa: E731
    train = read("train.jsonl")[: args.train]
    held_out = read("eval.jsonl")
    for name, rows in (("preference_train", train), ("preference_eval", held_out)):
        path = args.out / f"{name}.jsonl"
        with path.open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in pairs(rows, rng))
        print(f"wrote {len(rows)} pairs to {path}")
    # Its own generator, so the pairs above stay as they were before it existed
    path = args.out / "feedback_train.jsonl"
    with path.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in feedback(train, random.Random(args.seed + 1)))
    print(f"wrote {len(train)} feedback rows to {path}")


if __name__ == "__main__":
    main()
