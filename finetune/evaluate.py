"""Using a trained model: held-out loss and exact match, loading, and generation."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

import finetune.models  # noqa: F401  (registers the project's architectures)
from finetune.config.data import DatasetConfig
from finetune.config.objective import PREFERENCE_OBJECTIVES, PROMPT_OBJECTIVES
from finetune.config.schema import RunConfig
from finetune.data.formats import BadRow, prompt_and_answer, prompt_parts
from finetune.data.pipeline import build_datasets
from finetune.data.sources import InvalidRow, iter_rows
from finetune.errors import ConfigError, FinetuneError
from finetune.layout import STAGING, save_being_moved
from finetune.methods.base import TASK_AUTO_CLASSES
from finetune.train.objectives import head_labels, objective_of

# model.task -> peft's Auto class for an adapter trained with that head
PEFT_AUTO_CLASSES = {
    "causal_lm": "AutoPeftModelForCausalLM",
    "seq2seq": "AutoPeftModelForSeq2SeqLM",
    "sequence_classification": "AutoPeftModelForSequenceClassification",
    "masked_lm": "AutoPeftModel",
}


def prompt_answer_pairs(
    source: DatasetConfig, tokenizer: PreTrainedTokenizerBase, limit: int, answer_field: str | None
) -> list[tuple[str, str]]:
    """The first `limit` (prompt, reference answer) pairs of a completion, alpaca, chat or
    preference source (whose chosen answer is the reference), or of a prompt source whose
    rows hold the reference in `answer_field`; the prompt is what the model sees at
    generation time.

    Raises:
        ConfigError: the source's format has no answers to check (`text`, `feedback`, or
            `prompt` without `answer_field`).
    """
    fmt = source.format
    if fmt.type == "prompt" and answer_field is not None:
        return _prompt_rows_pairs(source, tokenizer, limit, answer_field)
    if fmt.type not in ("completion", "alpaca", "chat", "preference"):
        raise ConfigError(
            f"train.exact_match_rows: evaluation source {source.path} has format "
            f"{fmt.type!r}, which has no answers to check; use a completion, alpaca, chat or "
            "preference source"
        )
    pairs = []
    for _, row in islice(iter_rows(source), limit):
        if not isinstance(row, InvalidRow):
            pairs.append(prompt_and_answer(row, fmt, tokenizer))
    return pairs


def _prompt_rows_pairs(
    source: DatasetConfig, tokenizer: PreTrainedTokenizerBase, limit: int, answer_field: str
) -> list[tuple[str, str]]:
    pairs = []
    for where, row in islice(iter_rows(source), limit):
        if isinstance(row, InvalidRow) or not isinstance(row, dict):
            continue
        try:
            prompt, fields = prompt_parts(row, source.format)
        except BadRow:
            continue  # the data build reports it
        if fields.get(answer_field) is None:
            raise ConfigError(
                f"train.exact_match_rows: {where}: no reference answer in field "
                f"{answer_field!r} (the exact_match reward's column)"
            )
        if not isinstance(prompt, str):
            prompt = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=False
            )
        pairs.append((prompt, str(fields[answer_field])))
    return pairs


def reference_field(cfg: RunConfig) -> str | None:
    """The field of prompt rows holding reference answers: the first exact_match reward's
    column, or distillation's `answer_column` (None for other objectives, or without
    either)."""
    if cfg.objective.type == "distill":
        return cfg.objective.answer_column
    rewards = getattr(cfg.objective, "rewards", [])
    return next((r.column for r in rewards if r.type == "exact_match"), None)


@torch.no_grad()
def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> float:
    """Fraction of prompts whose greedy continuation, stripped, equals the answer."""
    was_training, use_cache = model.training, model.config.use_cache
    padding_side = tokenizer.padding_side
    model.eval()
    model.config.use_cache = True
    tokenizer.padding_side = "left"  # generation continues from the right end
    try:
        hits = 0
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            inputs = tokenizer(
                [p for p, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            # A decoder-only model's output starts with its prompt; an encoder-decoder's not.
            prompt_length = 0 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
            answers = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
            hits += sum(
                a.strip() == ref.strip() for a, (_, ref) in zip(answers, batch, strict=True)
            )
        return hits / max(len(pairs), 1)
    finally:
        model.train(was_training)
        model.config.use_cache = use_cache
        tokenizer.padding_side = padding_side


@torch.no_grad()
def preference_accuracy(
    model: PreTrainedModel, pairs: Any, pad_token_id: int, batch_size: int = 16
) -> dict[str, float]:
    """How often the model prefers the chosen answer of a held-out preference pair.

    A reward model (one-output sequence classifier) prefers the answer it scores higher; a
    language model the answer it gives the higher total log-probability (its tokens after
    the prompt). This is the model's own preference, unlike DPO's implicit-reward accuracy,
    which compares with the reference model and so is 0 before training by construction.

    Args:
        pairs: rows with `prompt_ids`, `chosen_ids` and `rejected_ids` (the data layer's).

    Returns:
        `preference_accuracy` (ties count as misses) and `preference_margin`, the mean
        score or log-probability difference.
    """
    was_training = model.training
    model.eval()
    scoring = model.config.num_labels == 1 and not model.can_generate()
    wins, margins = [], []
    try:
        for start in range(0, len(pairs), batch_size):
            rows = pairs[start : start + batch_size]
            scores = [
                _sequence_scores(model, rows["prompt_ids"], rows[key], pad_token_id, scoring)
                for key in ("chosen_ids", "rejected_ids")
            ]
            margin = scores[0] - scores[1]
            wins += (margin > 0).tolist()
            margins += margin.tolist()
    finally:
        model.train(was_training)
    count = max(len(wins), 1)
    return {"preference_accuracy": sum(wins) / count, "preference_margin": sum(margins) / count}


@torch.no_grad()
def feedback_log_probs(
    model: PreTrainedModel, rows: Any, pad_token_id: int, batch_size: int = 16
) -> dict[str, float]:
    """The model's mean log-probability of the desirable and of the undesirable answers of
    held-out feedback rows (`prompt_ids`, `completion_ids`, `label`): KTO raises the first
    and lowers the second.

    Returns:
        `desirable_log_prob` and `undesirable_log_prob` (each answer's summed
        log-probability, averaged over the answers of that label; NaN without any) and
        `feedback_gap`, their difference.
    """
    was_training = model.training
    model.eval()
    totals = {True: [], False: []}
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            scores = _sequence_scores(
                model, batch["prompt_ids"], batch["completion_ids"], pad_token_id, False
            )
            for label, score in zip(batch["label"], scores.tolist(), strict=True):
                totals[bool(label)].append(score)
    finally:
        model.train(was_training)
    good, bad = (sum(v) / len(v) if v else math.nan for v in (totals[True], totals[False]))
    return {"desirable_log_prob": good, "undesirable_log_prob": bad, "feedback_gap": good - bad}


def held_out_scores(
    model: PreTrainedModel, rows: Any, pad_token_id: int, batch_size: int
) -> dict[str, float]:
    """The model's own scores of held-out preference pairs (`preference_accuracy`) or
    feedback rows (`feedback_log_probs`), by the rows' columns."""
    if "chosen_ids" in rows.column_names:
        return preference_accuracy(model, rows, pad_token_id, batch_size)
    return feedback_log_probs(model, rows, pad_token_id, batch_size)


def _sequence_scores(
    model: PreTrainedModel,
    prompts: list[list[int]],
    answers: list[list[int]],
    pad_token_id: int,
    scoring: bool,
) -> torch.Tensor:
    """Per row: the reward of prompt + answer, or the answer's summed log-probability."""
    sequences = [p + a for p, a in zip(prompts, answers, strict=True)]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for row, (prompt, sequence) in enumerate(zip(prompts, sequences, strict=True)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        answer[row, len(prompt) : len(sequence)] = True
    ids, mask, answer = ids.to(model.device), mask.to(model.device), answer.to(model.device)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    if scoring:
        return logits[:, 0].cpu()
    # The token at position t is predicted by the logits at t - 1.
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    taken = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (taken * answer[:, 1:]).sum(dim=1).cpu()


@contextmanager
def loading_errors(path: Path) -> Iterator[None]:
    """Turn a damaged or truncated saved-model file into one message: transformers says
    which (config.json is not valid JSON, a safetensors header that does not cover the
    file, ...)."""
    try:
        yield
    except (OSError, ValueError, SafetensorError) as err:
        raise FinetuneError(f"{path}: the saved model cannot be loaded: {err}") from err


def load_trained(
    model_dir: str | Path,
    trust_remote_code: bool = False,
    task: str | None = None,
    labels: list[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A run's saved model (a full model or a peft adapter) and its tokenizer, for inference.
    An adapter of a classification head rebuilds its base with `labels` outputs (an
    adapter's folder does not record them).

    The head is `task`'s (see `model.task`); by default a causal LM, or a seq2seq LM for an
    encoder-decoder config.

    Raises:
        FinetuneError: `model_dir` holds no model.
    """
    path = Path(model_dir)
    if save_being_moved(path):
        raise FinetuneError(
            f"{path}: its final model is being moved into place, or a run was killed doing "
            f"so ({path / STAGING} holds the rest); wait for the run to end, or finish the "
            "move with `finetune train RUN_CONFIG --resume` on it"
        )
    is_adapter = (path / "adapter_config.json").is_file()
    if not is_adapter and not (path / "config.json").is_file():
        raise FinetuneError(
            f"{path}: no model here (no config.json or adapter_config.json); if its run has not "
            "finished, evaluate a checkpoint with --model DIR/checkpoints/checkpoint-N"
        )
    with loading_errors(path):
        if is_adapter:
            import peft

            auto_peft = getattr(peft, PEFT_AUTO_CLASSES[task or "causal_lm"])
            head = {"id2label": dict(enumerate(labels))} if labels else {}
            model = auto_peft.from_pretrained(path, trust_remote_code=trust_remote_code, **head)
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            task = task or ("seq2seq" if config.is_encoder_decoder else "causal_lm")
            auto = TASK_AUTO_CLASSES[task]
            model = auto.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


@torch.no_grad()
def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    chat: bool = False,
    system: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
) -> str:
    """Continue `prompt` (or answer it as a chat user turn) and return the new text.

    A temperature of 0 decodes greedily (or with beam search when `num_beams` > 1);
    above 0 it samples, with optional top-k and top-p filtering.
    """
    if chat:
        if tokenizer.chat_template is None:
            raise FinetuneError("--chat: this tokenizer has no chat template")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat).to(model.device)
    sampling = temperature > 0
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if sampling else {}
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        num_beams=num_beams,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **options,
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate_model(cfg: RunConfig, model_dir: str | Path) -> dict[str, float]:
    """Loss and perplexity (for a preference objective: how often the model prefers the
    chosen answer of held-out pairs, or its log-probabilities of held-out feedback
    answers) of a saved model on the run's evaluation data, and exact match when
    configured.

    Raises:
        ConfigError: the config has no evaluation data.
    """
    if not cfg.data.eval and cfg.data.eval_ratio == 0:
        raise ConfigError("data: nothing to evaluate on; set data.eval or data.eval_ratio")
    model, tokenizer = load_trained(
        model_dir, cfg.model.trust_remote_code, cfg.model.task, head_labels(cfg)
    )
    _, eval_set = build_datasets(cfg.data, tokenizer, cfg.train.seed)
    if cfg.objective.type in PREFERENCE_OBJECTIVES:
        scores = held_out_scores(
            model, eval_set, tokenizer.pad_token_id, cfg.train.micro_batch_size
        )
        metrics = {f"eval_{name}": value for name, value in scores.items()}
    elif cfg.objective.type in PROMPT_OBJECTIVES:
        if not cfg.train.exact_match_rows:
            raise ConfigError(
                f"train.exact_match_rows: a {cfg.objective.type} model's held-out figure is "
                "its exact match on the prompt rows; set it (e.g. --set "
                "train.exact_match_rows=200)"
            )
        metrics = {}
    else:
        metrics = _loss_metrics(cfg, model, tokenizer, eval_set)
    if cfg.train.exact_match_rows:
        pairs = prompt_answer_pairs(
            cfg.data.eval[0], tokenizer, cfg.train.exact_match_rows, reference_field(cfg)
        )
        metrics["exact_match"] = exact_match(
            model, tokenizer, pairs, cfg.train.exact_match_max_new_tokens
        )
    return metrics


def _loss_metrics(
    cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, eval_set: Any
) -> dict[str, float]:
    """The Trainer's evaluation loss (and the task's metrics), with perplexity."""
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=cfg.train.micro_batch_size,
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            remove_unused_columns=False,
        )
        objective = objective_of(cfg.model.task)
        trainer = Trainer(
            model=model,
            args=args,
            eval_dataset=eval_set,
            data_collator=objective.collator(cfg.data, tokenizer, cfg.train.seed),
            processing_class=tokenizer,
            compute_metrics=objective.metrics,
        )
        metrics = trainer.evaluate()
    metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    return metrics
