"""The end-of-run report a person reads."""

from __future__ import annotations

import math
from typing import Any

from finetune.config.objective import ONLINE_OBJECTIVES

ROWS = (
    ("loss", "eval_loss", "untrained_loss", "{:.4f}"),
    ("perplexity", "eval_perplexity", "untrained_perplexity", "{:.2f}"),
    ("exact match", "exact_match", "untrained_exact_match", "{:.1%}"),
    ("accuracy", "eval_accuracy", "untrained_accuracy", "{:.1%}"),
    ("preference accuracy", "eval_preference_accuracy", "untrained_preference_accuracy", "{:.1%}"),
    ("preference margin", "eval_preference_margin", "untrained_preference_margin", "{:.3f}"),
    ("reward accuracy", "eval_rewards/accuracies", "untrained_rewards/accuracies", "{:.1%}"),
    ("reward margin", "eval_rewards/margins", "untrained_rewards/margins", "{:.3f}"),
    ("mean reward", "eval_reward", "untrained_reward", "{:.3f}"),
    ("desirable log-prob", "eval_desirable_log_prob", "untrained_desirable_log_prob", "{:.3f}"),
    (
        "undesirable log-prob",
        "eval_undesirable_log_prob",
        "untrained_undesirable_log_prob",
        "{:.3f}",
    ),
)
"""(row name, trained metric, untrained metric, format). `reward *` are DPO's and KTO's
implicit rewards (relative to the reference model, so 0 before training); `preference *`
is the model's own preference on held-out pairs (finetune.evaluate.preference_accuracy);
`*desirable log-prob` its log-probabilities of held-out feedback answers
(finetune.evaluate.feedback_log_probs); `mean reward` the weighted sum of GRPO's and RLOO's
rewards of completions sampled for the held-out prompts."""


def format_report(summary: dict[str, Any]) -> str:
    """Held-out metrics after training, beside the untrained model's when measured."""
    trained = dict(summary["metrics"])
    untrained = dict(summary.get("untrained_metrics") or {})
    for metrics, loss in ((trained, "eval_loss"), (untrained, "untrained_loss")):
        # A language model's loss only: a preference loss has no perplexity
        if loss in metrics and summary.get("objective", "sft") == "sft":
            metrics[loss.replace("loss", "perplexity")] = math.exp(min(metrics[loss], 50.0))
    lines = [f"trained {summary['global_step']} steps, {summary['tokens_seen']:,} tokens"]
    rows = [(name, trained.get(t), untrained.get(u), fmt) for name, t, u, fmt in ROWS]
    if summary.get("objective") in ONLINE_OBJECTIVES:  # a policy-gradient loss says little
        rows = [row for row in rows if row[0] != "loss"]
    rows = [row for row in rows if row[1] is not None]
    if not rows:
        return lines[0]
    lines.append(f"{'held-out evaluation':<22}{'untrained':>12}{'trained':>12}")
    for name, after, before, fmt in rows:
        shown_before = fmt.format(before) if before is not None else "-"
        lines.append(f"  {name:<20}{shown_before:>12}{fmt.format(after):>12}")
    return "\n".join(lines)
