"""Using a trained model: held-out loss and exact match, loading, and generation."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

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
from finetune.config.schema import RunConfig
from finetune.data.formats import prompt_and_answer
from finetune.data.pipeline import build_datasets
from finetune.data.sources import InvalidRow, iter_rows
from finetune.errors import ConfigError, FinetuneError
from finetune.layout import STAGING, save_being_moved
from finetune.methods.base import TASK_AUTO_CLASSES
from finetune.train.objectives import objective_of


def prompt_answer_pairs(
    source: DatasetConfig, tokenizer: PreTrainedTokenizerBase, limit: int
) -> list[tuple[str, str]]:
    """The first `limit` (prompt, reference answer) pairs of a completion, alpaca or chat
    source; the prompt is what the model sees at generation time.

    Raises:
        ConfigError: the source's format has no answers to check (`text`).
    """
    fmt = source.format
    if fmt.type not in ("completion", "alpaca", "chat"):
        raise ConfigError(
            f"train.exact_match_rows: evaluation source {source.path} has format "
            f"{fmt.type!r}, which has no answers to check; use a completion, alpaca or chat "
            "source"
        )
    pairs = []
    for _, row in islice(iter_rows(source), limit):
        if not isinstance(row, InvalidRow):
            pairs.append(prompt_and_answer(row, fmt, tokenizer))
    return pairs


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
    model_dir: str | Path, trust_remote_code: bool = False, task: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A run's saved model (a full model or a peft adapter) and its tokenizer, for inference.

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
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(
                path, trust_remote_code=trust_remote_code
            )
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
    """Loss, perplexity (and exact match, when configured) of a saved model on the run's
    evaluation data.

    Raises:
        ConfigError: the config has no evaluation data.
    """
    if not cfg.data.eval and cfg.data.eval_ratio == 0:
        raise ConfigError("data: nothing to evaluate on; set data.eval or data.eval_ratio")
    model, tokenizer = load_trained(model_dir, cfg.model.trust_remote_code, cfg.model.task)
    _, eval_set = build_datasets(cfg.data, tokenizer, cfg.train.seed)
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
    if cfg.train.exact_match_rows:
        pairs = prompt_answer_pairs(cfg.data.eval[0], tokenizer, cfg.train.exact_match_rows)
        metrics["exact_match"] = exact_match(
            model, tokenizer, pairs, cfg.train.exact_match_max_new_tokens
        )
    return metrics
