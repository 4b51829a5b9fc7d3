"""The objective section: each objective's options exist only when it is chosen, and
combinations that cannot train are refused before anything runs, with one message."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config.loader import validate_config
from finetune.errors import ConfigError
from tests.conftest import tiny_config

PAIRS = {"path": "pairs.jsonl", "format": "preference"}


def _config(tmp_path: Path, objective, **sections) -> dict:
    cfg = tiny_config(tmp_path, **sections)
    cfg["data"]["train"] = [PAIRS]
    cfg["objective"] = objective
    return cfg


def _error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(cfg)
    return str(caught.value)


def test_defaults_and_shorthand(tmp_path: Path) -> None:
    assert validate_config(tiny_config(tmp_path)).objective.type == "sft"
    dpo = validate_config(_config(tmp_path, "dpo")).objective
    assert (dpo.beta, dpo.loss_type, dpo.reference) == (0.1, ["sigmoid"], "model")
    ipo = validate_config(_config(tmp_path, {"type": "dpo", "loss_type": "ipo"})).objective
    assert ipo.loss_type == ["ipo"]


def test_an_option_of_another_objective_is_an_unknown_field(tmp_path: Path) -> None:
    message = _error(_config(tmp_path, {"type": "reward", "beta": 0.2}))
    assert "objective.beta: unknown field (type 'reward')" in message
    message = _error(_config(tmp_path, {"type": "dpo", "bta": 0.2}))
    assert "did you mean 'beta'?" in message


def test_dpo_options_are_checked(tmp_path: Path) -> None:
    message = _error(_config(tmp_path, {"type": "dpo", "loss_type": ["sigmoid", "hing"]}))
    assert "objective.loss_type[1]" in message and "got 'hing'" in message
    weights = {"type": "dpo", "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}
    assert "one weight per loss" in _error(_config(tmp_path, weights))
    assert "label_smoothing above 0" in _error(
        _config(tmp_path, {"type": "dpo", "loss_type": "exo_pair"})
    )


def test_preference_data_and_objective_go_together(tmp_path: Path) -> None:
    sft = _config(tmp_path, "sft")
    assert "set objective.type to one of them" in _error(sft)
    text = tiny_config(tmp_path)
    text["objective"] = "dpo"
    assert "use format: preference" in _error(text)
    with_eval = _config(tmp_path, "dpo")
    with_eval["data"]["eval"] = [{"path": "held_out.jsonl", "format": "completion"}]
    assert "data.eval[0] (held_out.jsonl) has format 'completion'" in _error(with_eval)


def test_reward_objective_takes_the_classification_head(tmp_path: Path) -> None:
    cfg = validate_config(_config(tmp_path, "reward"))
    assert cfg.model.task == "sequence_classification"
    explicit = _config(tmp_path, "reward")
    explicit["model"]["task"] = "causal_lm"
    assert "model.task must be sequence_classification" in _error(explicit)
    generating = _config(tmp_path, "reward", train={"exact_match_rows": 5})
    generating["data"]["eval"] = [PAIRS]
    assert "a reward model does not generate" in _error(generating)


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        ({"data": {"packing": True}}, "data.packing"),
        ({"distributed": {"pipeline_stages": 2}}, "no pipeline- or tensor-parallel engine"),
        ({"distributed": {"tensor_parallel": 2}}, "no pipeline- or tensor-parallel engine"),
        ({"model": {"task": "seq2seq"}}, "dpo trains a language model"),
    ],
)
def test_combinations_that_cannot_train(tmp_path: Path, sections: dict, fragment: str) -> None:
    assert fragment in _error(_config(tmp_path, "dpo", **sections))


FEEDBACK = {"path": "feedback.jsonl", "format": "feedback"}


def test_kto_takes_feedback_or_preference_data(tmp_path: Path) -> None:
    kto = validate_config(_config(tmp_path, "kto")).objective  # preference pairs
    assert (kto.beta, kto.loss_type, kto.desirable_weight) == (0.1, "kto", 1.0)
    feedback = _config(tmp_path, {"type": "kto", "undesirable_weight": 1.3})
    feedback["data"]["train"] = [FEEDBACK]
    feedback["data"]["eval"] = [PAIRS]  # held-out pairs score the model's own preference
    assert validate_config(feedback).objective.undesirable_weight == 1.3
    # feedback data is KTO's alone, and one run's training sources share one format
    for objective in ("sft", "dpo"):
        wrong = _config(tmp_path, objective)
        wrong["data"]["train"] = [FEEDBACK]
        assert "feedback" in _error(wrong) and "objective.type" in _error(wrong)
    mixed = _config(tmp_path, "kto")
    mixed["data"]["train"] = [FEEDBACK, PAIRS]
    assert "data.train: the sources mix the formats ['feedback', 'preference']" in _error(mixed)
    chat = _config(tmp_path, "kto")
    chat["data"]["train"] = [{"path": "c.jsonl", "format": "chat"}]
    assert "format: feedback (prompt, completion and label fields)" in _error(chat)


def test_kto_options_are_checked(tmp_path: Path) -> None:
    single = _config(tmp_path, "kto", train={"micro_batch_size": 1})
    assert "needs 2 or more" in _error(single)
    apo = {"type": "kto", "loss_type": "apo_zero_unpaired"}
    assert validate_config(_config(tmp_path, apo, train={"micro_batch_size": 1}))
    generating = _config(tmp_path, "kto", train={"exact_match_rows": 5})
    generating["data"]["eval"] = [FEEDBACK]
    assert "feedback rows have no reference answer" in _error(generating)
    assert "objective.desirable_weight" in _error(
        _config(tmp_path, {"type": "kto", "desirable_weight": 0})
    )


def test_reference_free_objectives(tmp_path: Path) -> None:
    simpo = validate_config(_config(tmp_path, "simpo")).objective
    assert (simpo.beta, simpo.simpo_gamma, simpo.cpo_alpha) == (2.0, 0.5, 0.0)
    cpo = validate_config(_config(tmp_path, {"type": "cpo", "loss_type": "ipo"})).objective
    assert (cpo.loss_type, cpo.cpo_alpha) == ("ipo", 1.0)
    assert "objective.simpo_gamma: unknown field (type 'orpo')" in _error(
        _config(tmp_path, {"type": "orpo", "simpo_gamma": 1.0})
    )
    assert "orpo trains a language model" in _error(
        _config(tmp_path, "orpo", model={"task": "seq2seq"})
    )
    text = tiny_config(tmp_path)
    text["objective"] = "simpo"
    assert "use format: preference" in _error(text)


PROMPTS = {"path": "prompts.jsonl", "format": "prompt"}
EXACT = {"type": "exact_match", "column": "answer"}


def _online(tmp_path: Path, objective, **sections) -> dict:
    cfg = _config(tmp_path, objective, **sections)
    cfg["data"]["train"] = [PROMPTS]
    return cfg


def test_grpo_and_rloo_take_prompts_and_rewards(tmp_path: Path) -> None:
    grpo = validate_config(_online(tmp_path, {"type": "grpo", "rewards": [EXACT]})).objective
    assert (grpo.num_generations, grpo.loss_type, grpo.beta) == (4, "dapo", 0.0)
    assert grpo.rewards[0].column == "answer" and grpo.rewards[0].weight == 1.0
    rloo = {"type": "rloo", "rewards": [{"type": "length", "max_tokens": 8}]}
    assert validate_config(_online(tmp_path, rloo)).objective.rewards[0].penalty == 0.1
    assert "grpo needs at least one reward function" in _error(_online(tmp_path, "grpo"))
    assert "objective.loss_type: unknown field (type 'rloo')" in _error(
        _online(tmp_path, {"type": "rloo", "rewards": [EXACT], "loss_type": "grpo"})
    )
    wrong = _config(tmp_path, {"type": "grpo", "rewards": [EXACT]})  # preference pairs
    assert "format: prompt (a prompt field, and the fields the rewards read)" in _error(wrong)
    sft = _online(tmp_path, "sft")
    assert "the prompt format is the data of objective.type grpo or rloo or distill" in _error(sft)


def test_distillation_takes_prompts_and_a_teacher(tmp_path: Path) -> None:
    distill = validate_config(_online(tmp_path, {"type": "distill", "teacher": "t"})).objective
    assert (distill.beta, distill.max_completion_length, distill.answer_column) == (1.0, 32, None)
    assert "objective.teacher: required field is missing" in _error(_online(tmp_path, "distill"))
    assert "objective.beta" in _error(
        _online(tmp_path, {"type": "distill", "teacher": "t", "beta": 1.5})
    )
    assert "objective.rewards: unknown field (type 'distill')" in _error(
        _online(tmp_path, {"type": "distill", "teacher": "t", "rewards": [EXACT]})
    )
    exact = _online(tmp_path, {"type": "distill", "teacher": "t"}, train={"exact_match_rows": 8})
    assert "objective.answer_column" in _error(exact)
    head = _online(
        tmp_path,
        {"type": "distill", "teacher": "t"},
        method={"type": "lora", "target_modules": ["q_proj", "lm_head"]},
    )
    assert "remove lm_head" in _error(head)


@pytest.mark.parametrize(
    ("reward", "fragment"),
    [
        ({"type": "function", "function": "rewards.py"}, "is not module:function"),
        ({"type": "regex", "pattern": "(unclosed"}, "not a valid regular expression"),
        ({"type": "exact_match", "extract": r"\d+"}, "needs a group around the answer"),
        ({"type": "length"}, "objective.rewards[0].max_tokens"),
        ({"type": "bleu"}, "objective.rewards[0]"),
    ],
)
def test_reward_options_are_checked(tmp_path: Path, reward: dict, fragment: str) -> None:
    assert fragment in _error(_online(tmp_path, {"type": "grpo", "rewards": [reward]}))


def test_grpo_batches_hold_whole_groups(tmp_path: Path) -> None:
    odd = _online(tmp_path, {"type": "grpo", "rewards": [EXACT], "num_generations": 3})
    assert "(8) is not a multiple of 3" in _error(odd)
    accumulated = _online(
        tmp_path,
        {"type": "grpo", "rewards": [EXACT], "num_generations": 16},
        train={"gradient_accumulation_steps": 2},
    )
    assert validate_config(accumulated).objective.num_generations == 16
    accumulated["data"]["eval"] = [PROMPTS]  # evaluation samples a group per micro-batch
    assert "evaluation samples whole groups" in _error(accumulated)


def test_grpo_reference_and_exact_match_need_their_sources(tmp_path: Path) -> None:
    kl = _online(tmp_path, {"type": "grpo", "rewards": [EXACT], "beta": 0.04})
    assert "reference model is loaded from model.name_or_path" in _error(kl)
    kl["method"] = {"type": "lora"}  # the base with the adapter disabled
    assert validate_config(kl).objective.beta == 0.04
    regex = {"type": "grpo", "rewards": [{"type": "regex", "pattern": "x"}]}
    generating = _online(tmp_path, regex, train={"exact_match_rows": 5})
    generating["data"]["eval"] = [PROMPTS]
    assert "are the column of an exact_match reward" in _error(generating)
