"""Reward functions of the online objectives (GRPO, RLOO), from `objective.rewards`.

Each one is called as TRL calls reward functions: keyword arguments `prompts`,
`completions` and `completion_ids` (one entry per sampled completion), every other field of
the prompt rows (one value per completion) and `trainer_state`; it returns one float per
completion, or None where it has no opinion. The built-in ones read completions as text
(for chat prompts, the assistant turn's content).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from finetune.config.objective import (
    ExactMatchReward,
    FunctionReward,
    LengthReward,
    RegexReward,
    RewardConfig,
)
from finetune.errors import ConfigError, FinetuneError

RewardFunction = Callable[..., list[float | None]]


class RewardError(FinetuneError):
    """A reward function failed, or returned something other than one reward per
    completion."""


def completion_text(completion: Any) -> str:
    """A completion as text: a string as it is, chat turns as their contents."""
    if isinstance(completion, str):
        return completion
    return "".join(turn["content"] for turn in completion)


def exact_match(cfg: ExactMatchReward) -> RewardFunction:
    """1.0 where the completion's final answer equals the row's reference, else 0.0."""
    extract = re.compile(cfg.extract) if cfg.extract is not None else None

    def exact_match(completions: list[Any], **columns: Any) -> list[float]:
        if cfg.column not in columns:
            fields = ", ".join(sorted(set(columns) - set(NOT_FIELDS))) or "none"
            raise RewardError(
                f"objective.rewards: exact_match reads the reference answer from field "
                f"{cfg.column!r}, which the prompt rows do not have (fields: {fields}); set "
                "its column"
            )
        scores = []
        for completion, reference in zip(completions, columns[cfg.column], strict=True):
            answer = completion_text(completion)
            if extract is not None:
                found = extract.findall(answer)
                if not found:
                    scores.append(0.0)
                    continue
                last = found[-1]
                answer = last[0] if isinstance(last, tuple) else last
            scores.append(float(answer.strip() == str(reference).strip()))
        return scores

    return exact_match


def regex(cfg: RegexReward) -> RewardFunction:
    """1.0 where the completion matches the pattern, else 0.0."""
    pattern = re.compile(cfg.pattern)

    def regex(completions: list[Any], **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if cfg.match == "full":
            return [float(pattern.fullmatch(t.strip()) is not None) for t in texts]
        return [float(pattern.search(t) is not None) for t in texts]

    return regex


def length(cfg: LengthReward) -> RewardFunction:
    """Minus `penalty` for each completion token beyond `max_tokens`."""

    def length(completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [-cfg.penalty * max(len(ids) - cfg.max_tokens, 0) for ids in completion_ids]

    return length


def imported(cfg: FunctionReward) -> RewardFunction:
    """The user's `module:function`, imported (the working directory first on the path, as
    `python -m` would have it).

    Raises:
        ConfigError: the module cannot be imported, or has no such callable.
    """
    module_name, name = cfg.function.split(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import error, or an error raised by the module itself
        raise ConfigError(
            f"objective.rewards: cannot import module {module_name!r} of reward function "
            f"{cfg.function!r}: {type(err).__name__}: {err}. It must be importable from the "
            "directory the run starts in, or installed"
        ) from err
    function = getattr(module, name, None)
    if not callable(function):
        what = "is not callable" if hasattr(module, name) else "does not exist"
        raise ConfigError(
            f"objective.rewards: {cfg.function!r}: {name!r} {what} in {module.__file__}"
        )
    return function


BUILT_IN: dict[str, Callable[[Any], RewardFunction]] = {
    "exact_match": exact_match,
    "regex": regex,
    "length": length,
    "function": imported,
}

NOT_FIELDS = ("prompts", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""Keyword arguments of a reward function that are not fields of the rows."""

RESERVED = (*NOT_FIELDS, "completions")
"""Names of reward function arguments, which a row's field of the same name cannot take."""


def checked(function: RewardFunction, label: str) -> RewardFunction:
    """`function` as TRL calls it, with the rows' own fields (the `extras` JSON of the data
    layer's prompt rows) as its keyword arguments, made to fail with one message naming it
    when it raises or returns anything but one number (or None) per completion."""

    def reward(
        prompts: list[Any], completions: list[Any], extras: list[str], **kwargs: Any
    ) -> list[float | None]:
        rows = [json.loads(e) for e in extras]
        names = dict.fromkeys(k for row in rows for k in row if k not in RESERVED)
        fields = {name: [row.get(name) for row in rows] for name in names}
        try:
            values = function(prompts=prompts, completions=completions, **fields, **kwargs)
        except RewardError:
            raise
        except Exception as err:
            raise RewardError(
                f"reward function {label} raised {type(err).__name__}: {err}"
            ) from err
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise RewardError(
                f"reward function {label} returned {type(values).__name__}; it must return "
                f"a list of {len(completions)} floats (one per completion, None for none)"
            )
        if len(values) != len(completions):
            raise RewardError(
                f"reward function {label} returned {len(values)} rewards for "
                f"{len(completions)} completions; it must return one per completion"
            )
        for i, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
                raise RewardError(
                    f"reward function {label} returned {value!r} for completion {i}; a "
                    "reward is a number (None for none)"
                )
        return [None if v is None else float(v) for v in values]

    reward.__name__ = label  # TRL logs each reward under its function's name
    return reward


def reward_functions(rewards: list[RewardConfig]) -> tuple[list[RewardFunction], list[float]]:
    """The configured reward functions, each checked, and their weights.

    Raises:
        ConfigError: a user function cannot be imported.
    """
    functions, weights = [], []
    for i, cfg in enumerate(rewards):
        name = cfg.function.split(":")[1] if isinstance(cfg, FunctionReward) else cfg.type
        label = name if [r.type for r in rewards].count(cfg.type) == 1 else f"{name}_{i}"
        functions.append(checked(BUILT_IN[cfg.type](cfg), label))
        weights.append(cfg.weight)
    return functions, weights
