"""The reward functions of GRPO and RLOO, called as TRL calls them: the built-in ones score
what they say, a user's function gets the rows' fields, and a function that fails or
returns the wrong shape stops the run with a message naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from finetune.config.objective import (
    ExactMatchReward,
    FunctionReward,
    GrpoObjective,
    LengthReward,
    RegexReward,
)
from finetune.errors import ConfigError
from finetune.train.rewards import RewardError, reward_functions


def _call(reward, completions, rows, **more):
    """Call `reward` as TRL does: one entry per completion, the rows' fields in `extras`."""
    return reward(
        prompts=["q"] * len(completions),
        completions=completions,
        completion_ids=more.pop("completion_ids", [[1]] * len(completions)),
        extras=[json.dumps(r) for r in rows],
        trainer_state=None,
        log_extra=None,
        log_metric=None,
        **more,
    )


def _one(cfg):
    (function,), (weight,) = reward_functions([cfg])
    return function, weight


def test_exact_match_compares_the_stripped_answer() -> None:
    reward, _ = _one(ExactMatchReward(column="answer"))
    rows = [{"answer": " 12"}, {"answer": 12}, {"answer": "12"}, {"answer": "13"}]
    assert _call(reward, ["12", " 12\n", "12.", "12"], rows) == [1.0, 1.0, 0.0, 0.0]
    assert reward.__name__ == "exact_match"  # TRL logs rewards/exact_match/mean


def test_exact_match_extracts_the_last_final_answer() -> None:
    reward, _ = _one(ExactMatchReward(column="answer", extract=r"####\s*(\S+)"))
    rows = [{"answer": "7"}] * 3
    completions = ["3+4 #### 6 wait #### 7", "so 7", "#### 6"]
    assert _call(reward, completions, rows) == [1.0, 0.0, 0.0]


def test_chat_completions_are_read_as_their_text() -> None:
    reward, _ = _one(ExactMatchReward(column="answer"))
    turns = [[{"role": "assistant", "content": "paris"}], [{"role": "assistant", "content": "x"}]]
    assert _call(reward, turns, [{"answer": "paris"}] * 2) == [1.0, 0.0]


def test_a_missing_reference_field_is_named() -> None:
    reward, _ = _one(ExactMatchReward(column="solution"))
    with pytest.raises(RewardError, match=r"field 'solution'.*\(fields: answer, task\)"):
        _call(reward, ["1"], [{"answer": "1", "task": "t"}])


def test_regex_matches_whole_or_anywhere() -> None:
    full, _ = _one(RegexReward(pattern=r"\d+"))
    anywhere, _ = _one(RegexReward(pattern=r"\d+", match="search"))
    completions = [" 42 ", "about 42", "none"]
    assert _call(full, completions, [{}] * 3) == [1.0, 0.0, 0.0]
    assert _call(anywhere, completions, [{}] * 3) == [1.0, 1.0, 0.0]


def test_length_penalises_tokens_beyond_the_limit() -> None:
    reward, weight = _one(LengthReward(max_tokens=3, penalty=0.5, weight=2.0))
    ids = [[1, 2], [1, 2, 3], [1, 2, 3, 4, 5]]
    assert _call(reward, ["a", "b", "c"], [{}] * 3, completion_ids=ids) == [0.0, 0.0, -1.0]
    assert weight == 2.0


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, answer, **kwargs):\n"
        "    return [float(len(c) <= len(a)) for c, a in zip(completions, answer)]\n"
        "def short(completions, **kwargs):\n"
        "    return [1.0]\n"
        "def text(completions, **kwargs):\n"
        "    return ['good'] * len(completions)\n"
        "def nan(completions, **kwargs):\n"
        "    return [float('nan')] * len(completions)\n"
        "def maybe(completions, **kwargs):\n"
        "    return [None, 1]\n"
        "def broken(completions, **kwargs):\n"
        "    raise KeyError('score')\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_a_user_function_gets_the_rows_fields(user_module: str) -> None:
    reward, _ = _one(FunctionReward(function=f"{user_module}:brevity"))
    rows = [{"answer": "abc", "task": "t"}, {"answer": "a", "task": "t"}]
    assert _call(reward, ["ab", "ab"], rows) == [1.0, 0.0]
    assert reward.__name__ == "brevity"
    maybe, _ = _one(FunctionReward(function=f"{user_module}:maybe"))
    assert _call(maybe, ["a", "b"], [{}, {}]) == [None, 1.0]  # None: no opinion


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("short", "returned 1 rewards for 2 completions"),
        ("text", "returned 'good' for completion 0"),
        ("nan", "returned nan for completion 0"),
        ("broken", "raised KeyError: 'score'"),
    ],
)
def test_a_bad_user_function_is_named(user_module: str, name: str, message: str) -> None:
    reward, _ = _one(FunctionReward(function=f"{user_module}:{name}"))
    with pytest.raises(RewardError, match=f"reward function {name} {message}"):
        _call(reward, ["a", "b"], [{}, {}])


def test_a_function_that_cannot_be_imported_is_a_config_error(user_module: str) -> None:
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        reward_functions([FunctionReward(function="no_such_module:score")])
    with pytest.raises(ConfigError, match="'missing' does not exist"):
        reward_functions([FunctionReward(function=f"{user_module}:missing")])
    with pytest.raises(ConfigError, match="'NOT_A_FUNCTION' is not callable"):
        reward_functions([FunctionReward(function=f"{user_module}:NOT_A_FUNCTION")])


def test_rewards_of_one_kind_get_numbered_names() -> None:
    objective = GrpoObjective(
        rewards=[{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"}]
    )
    functions, weights = reward_functions(objective.rewards)
    assert [f.__name__ for f in functions] == ["regex_0", "regex_1"] and weights == [1.0, 1.0]
