"""A human-readable summary of prepared data (what `finetune preprocess` prints)."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow.compute as pc

from finetune.data.pipeline import PreparedData

HISTOGRAM_BINS = 8
ANSWERS = ("chosen_ids", "rejected_ids")
BAR_WIDTH = 40


def format_summary(data: PreparedData) -> str:
    """Rows per source, rows dropped and why, tokens, packing and a length histogram."""
    lines = [
        f"data: max_length {data.max_length}, truncation {data.truncation}",
        "",
        f"{'source':<16} {'format':<10} {'rows':>8} {'bad':>6} {'no-loss':>8} "
        f"{'truncated':>9} {'kept':>8} {'train':>8} {'eval':>7}  cache  path",
    ]
    for r in data.sources:
        s = r.stats
        lines.append(
            f"{r.name:<16} {r.format:<10} {s.rows:>8} {s.bad:>6} {s.no_trainable:>8} "
            f"{s.truncated:>9} {s.kept:>8} {r.train_rows:>8} {r.eval_rows:>7}  "
            f"{'hit' if r.cached else 'new':<5}  {r.path}"
        )
    lines += ["", "dropped: bad = rows that do not fit their format (skipped by on_bad_row=skip);"]
    lines += ["         no-loss = rows with no trainable token left after truncation"]
    bad = [example for r in data.sources for example in r.stats.bad_examples]
    if bad:
        lines += ["", "bad rows (first ones):", *(f"  {b}" for b in bad[:10])]
    lines.append("")
    lines.append(_token_line("train", data.train_samples))
    if data.eval_samples is not None:
        lines.append(_token_line("eval", data.eval_samples))
    if data.packing_efficiency is not None:
        lines.append(
            f"packing: {len(data.train_samples)} samples into {len(data.train)} rows of "
            f"{data.max_length} tokens; {100 * data.packing_efficiency:.1f}% of positions "
            "hold tokens"
        )
    lines += ["", "sample length (tokens), train:"]
    lines += length_histogram(data.train_samples["length"], data.max_length)
    return "\n".join(lines) + "\n"


def _token_line(name: str, samples: datasets.Dataset) -> str:
    table = samples.with_format("arrow")[:]
    if "chosen_ids" in table.column_names:  # preference pairs: the answers carry the loss
        answers = [pc.sum(pc.list_value_length(table[c])).as_py() or 0 for c in ANSWERS]
        prompts = pc.sum(pc.list_value_length(table["prompt_ids"])).as_py() or 0
        tokens, trainable = 2 * prompts + sum(answers), sum(answers)
        return (
            f"{name}: {len(table)} pairs, {tokens} tokens in both sequences, {trainable} "
            f"in answers ({100 * trainable / max(tokens, 1):.1f}%), mean longer sequence "
            f"{pc.mean(table['length']).as_py() or 0:.1f}"
        )
    if "completion_ids" in table.column_names:  # feedback: the answer carries the loss
        trainable = pc.sum(pc.list_value_length(table["completion_ids"])).as_py() or 0
        tokens = pc.sum(table["length"]).as_py() or 0
        desirable = pc.sum(table["label"]).as_py() or 0
        return (
            f"{name}: {len(table)} answers ({desirable} desirable), {tokens} tokens, "
            f"{trainable} in answers ({100 * trainable / max(tokens, 1):.1f}%), mean length "
            f"{tokens / max(len(table), 1):.1f}"
        )
    if "extras" in table.column_names:  # prompts: the model writes the answers
        tokens = pc.sum(table["length"]).as_py() or 0
        return (
            f"{name}: {len(table)} prompts, {tokens} tokens, mean length "
            f"{tokens / max(len(table), 1):.1f} (answers are sampled while training)"
        )
    labels = table["labels"]
    carry = pc.sum(pc.not_equal(pc.list_flatten(labels), -100)).as_py() or 0
    # A sample's first label is never predicted (nothing comes before it).
    first = pc.sum(pc.not_equal(pc.list_element(labels, 0), -100)).as_py() or 0
    trainable = carry - first
    tokens = pc.sum(table["length"]).as_py() or 0
    mean = tokens / max(len(table), 1)
    return (
        f"{name}: {len(table)} samples, {tokens} tokens, {trainable} trainable "
        f"({100 * trainable / max(tokens, 1):.1f}%), mean length {mean:.1f}"
    )


def length_histogram(lengths: list[int], max_length: int, bins: int = HISTOGRAM_BINS) -> list[str]:
    """Text bars counting samples per length range, `bins` equal ranges up to `max_length`."""
    counts, edges = np.histogram(lengths, bins=bins, range=(1, max_length + 1))
    top = max(int(counts.max()), 1)
    rows = []
    for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
        bar = "#" * round(BAR_WIDTH * int(count) / top)
        rows.append(f"  {int(low):>6}-{int(high) - 1:<6} {bar:<{BAR_WIDTH}} {int(count)}")
    return rows
