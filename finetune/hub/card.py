"""The model card: metadata (license, base model, datasets, pipeline tag) and the text (how
to load it, how it was trained, held-out results, the loss curve, versions).
"""

from __future__ import annotations

import math
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from finetune.config.hub import HubConfig
from finetune.hub.errors import HubError
from finetune.hub.record import RunRecord, base_model, is_hub_id, task, trusts_remote_code
from finetune.layout import LOSS_CURVE


def card_metadata(record: RunRecord, hub: HubConfig) -> dict[str, Any]:
    """The model card's YAML metadata, checked with huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    base = base_model(record, hub)
    pipeline_tag, _ = task(record)
    tags = ["finetune"]
    if record.method is not None and record.kind != "base":
        tags.append(record.method.type)
    if record.objective is not None and record.objective.type != "sft" and record.kind != "base":
        tags += ["trl", record.objective.type]
    model_type = (record.config or {}).get("model_type") or (
        record.model.architecture if record.model else None
    )
    if model_type:
        tags.append(model_type)
    extra: dict[str, Any] = {}
    if record.adapter is not None:
        tags += ["transformers", "lora"] if record.adapter.get("peft_type") == "LORA" else []
        if base:
            tags.append(f"base_model:adapter:{base}")  # what peft writes into its own cards
    elif base:
        extra["base_model_relation"] = "finetune"
    if record.auto_map:
        tags.append("custom_code")
    data = ModelCardData(
        library_name="peft" if record.adapter is not None else "transformers",
        license=hub.license,
        base_model=base,
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=sorted(set(hub.datasets) | set(_hub_datasets(record))) or None,
        **extra,
    )
    return data.to_dict()


def _hub_datasets(record: RunRecord) -> list[str]:
    if record.data is None:
        return []
    sources = [*record.data.train, *record.data.eval]
    return [s.path for s in sources if is_hub_id(s.path) and not Path(s.path).suffix]


def model_card(record: RunRecord, hub: HubConfig, repo_id: str, has_curve: bool) -> str:
    """The README.md text: metadata block, usage, training procedure, results, loss curve.

    Raises:
        HubError: the metadata does not survive a round trip through huggingface_hub's
            ModelCard parser (it would be rejected or misread by the Hub).
    """
    from huggingface_hub import ModelCard

    metadata = card_metadata(record, hub)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    sections = [_card_intro(record, hub, repo_id), _card_usage(record, hub, repo_id)]
    if record.kind != "base":  # the run trained an adapter on these weights, not them
        sections += [_card_training(record), _card_results(record), _card_curve(record, has_curve)]
    sections.append(_card_versions(record))
    text = f"---\n{front}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    parsed = ModelCard(text).data.to_dict()
    if parsed != metadata:
        raise HubError(f"internal error: the model card metadata does not round-trip: {parsed}")
    return text


def _card_intro(record: RunRecord, hub: HubConfig, repo_id: str) -> str:
    base = base_model(record, hub)
    what = "A LoRA adapter" if record.adapter is not None else "A model"
    if record.model and record.model.architecture and not base:
        origin = f"trained from scratch (architecture `{record.model.architecture}`)"
    elif base:
        origin = f"fine-tuned from [{base}](https://huggingface.co/{base})"
    else:
        origin = "fine-tuned"
    status = ""
    if record.step is not None:
        status = f"\n\n**Training in progress**: this is the checkpoint at step {record.step}."
    if record.kind == "merged":
        status = "\n\nThe LoRA adapter trained by the run is merged into these weights."
    title = f"# {repo_id.split('/')[-1]}\n\n"
    if record.kind == "base":
        architecture = record.model.architecture if record.model else "new"
        return (
            f"{title}The randomly initialised `{architecture}` model that a LoRA adapter was "
            "trained on with finetune. It was not trained itself; load the adapter on top of it."
        )
    return f"{title}{what} {origin} with finetune.{status}"


def _card_usage(record: RunRecord, hub: HubConfig, repo_id: str) -> str:
    tag, auto = task(record)
    args = [f'"{repo_id}"']
    if hub.revision and hub.revision != "main":
        args.append(f'revision="{hub.revision}"')
    if trusts_remote_code(record):
        args.append("trust_remote_code=True")
    load = ", ".join(args)
    if record.adapter is not None:
        imports = [f"from peft import {auto}", "from transformers import AutoTokenizer"]
    else:
        imports = [f"from transformers import {auto}, AutoTokenizer"]
    lines = [
        *imports,
        "",
        f"tokenizer = AutoTokenizer.from_pretrained({load})",
        f"model = {auto}.from_pretrained({load})",
    ]
    if tag in ("text-generation", "text2text-generation"):
        lines += [
            'inputs = tokenizer("Once upon a time", return_tensors="pt")',
            "outputs = model.generate(**inputs, max_new_tokens=32)",
            "print(tokenizer.decode(outputs[0], skip_special_tokens=True))",
        ]
    elif tag == "text-classification":
        lines += [
            'inputs = tokenizer("A sentence to classify.", return_tensors="pt")',
            "print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])",
        ]
    snippet = "```python\n" + "\n".join(lines) + "\n```"
    if record.adapter is None and tag in ("text-generation", "fill-mask", "text-classification"):
        example = {
            "text-generation": '"Once upon a time"',
            "fill-mask": 'f"Paris is the {pipe.tokenizer.mask_token} of France."',
            "text-classification": '"A sentence to classify."',
        }[tag]
        pipe_args = ", ".join([f'"{tag}"', f"model={args[0]}", *args[1:]])
        snippet += (
            "\n\nor with a pipeline:\n\n```python\nfrom transformers import pipeline\n\n"
            f"pipe = pipeline({pipe_args})\nprint(pipe({example}))\n```"
        )
    if trusts_remote_code(record):
        snippet += (
            "\n\n`trust_remote_code=True` runs the model code stored in this repository "
            "(the configuration and modeling .py files); finetune need not be installed."
        )
    return "## Usage\n\n" + snippet


def _card_training(record: RunRecord) -> str:
    rows = _method_rows(record) + _hyperparameter_rows(record) + _progress_rows(record)
    if not rows:
        return ""
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"## Training procedure\n\n| | |\n|---|---|\n{table}"


def _method_rows(record: RunRecord) -> list[tuple[str, str]]:
    method = record.method
    rows: list[tuple[str, str]] = []
    if method is not None and method.type == "full":
        rows.append(("method", "full fine-tuning (every parameter trained)"))
    elif method is not None:
        modules = method.target_modules
        targets = modules if isinstance(modules, str) else ", ".join(modules)
        merged = ", merged into the base weights" if record.kind == "merged" else ""
        rows.append(("method", f"{method.type} (peft){merged}"))
        rows += [
            ("LoRA rank / alpha / dropout", f"{method.rank} / {method.alpha:g} / {method.dropout}"),
            ("target modules", f"`{targets}`"),
        ]
        if method.use_rslora or method.use_dora:
            rows.append(("variant", "rsLoRA" if method.use_rslora else "DoRA"))
    if record.objective is not None:
        rows.append(("objective", _objective_text(record.objective)))
    if record.data is not None:
        names = [Path(s.path).name if not is_hub_id(s.path) else s.path for s in record.data.train]
        rows.append(("training data", ", ".join(f"`{n}`" for n in names)))
        rows.append(("max sequence length", str(record.data.max_length)))
    return rows


def _objective_text(objective: Any) -> str:
    if objective.type == "dpo":
        losses = " + ".join(objective.loss_type)
        return (
            f"DPO (TRL's DPOTrainer), loss {losses}, beta {objective.beta:g}, reference "
            f"{'log-probs precomputed' if objective.reference == 'precomputed' else 'model'}, "
            "on preference pairs"
        )
    if objective.type == "kto":
        return (
            f"KTO (TRL's KTOTrainer), loss {objective.loss_type}, beta {objective.beta:g}, "
            f"desirable / undesirable weights {objective.desirable_weight:g} / "
            f"{objective.undesirable_weight:g}, reference "
            f"{'log-probs precomputed' if objective.reference == 'precomputed' else 'model'}"
        )
    if objective.type == "cpo":
        return (
            f"CPO (TRL's CPOTrainer), loss {objective.loss_type}, beta {objective.beta:g}, "
            f"NLL weight {objective.cpo_alpha:g}, no reference model, on preference pairs"
        )
    if objective.type == "simpo":
        return (
            f"SimPO (TRL's CPOTrainer), beta {objective.beta:g}, margin "
            f"{objective.simpo_gamma:g}, NLL weight {objective.cpo_alpha:g}, no reference "
            "model, on preference pairs"
        )
    if objective.type == "orpo":
        return (
            f"ORPO (TRL's ORPOTrainer), odds-ratio weight {objective.beta:g}, no reference "
            "model, on preference pairs"
        )
    if objective.type in ("grpo", "rloo"):
        name = objective.type.upper()
        trainer = f"{name} (TRL's {name}Trainer"
        rewards = ", ".join(
            r.function if r.type == "function" else r.type for r in objective.rewards
        )
        return (
            f"{trainer}), {objective.num_generations} sampled completions per prompt of up "
            f"to {objective.max_completion_length} tokens, rewards {rewards}, KL weight "
            f"{objective.beta:g}, on prompts"
        )
    if objective.type == "distill":
        return (
            f"on-policy distillation from {objective.teacher} (TRL's DistillationTrainer), "
            f"generalised JSD with beta {objective.beta:g} on sampled completions of up to "
            f"{objective.max_completion_length} tokens, on prompts"
        )
    if objective.type == "reward":
        return "reward model (TRL's RewardTrainer, pairwise loss) on preference pairs"
    return "supervised fine-tuning (the loss of the model's own head)"


def _hyperparameter_rows(record: RunRecord) -> list[tuple[str, str]]:
    train = record.train
    if train is None:
        return []
    world = int(record.info.get("world_size", 1))
    effective = train.micro_batch_size * train.gradient_accumulation_steps * world
    length = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs:g} epochs"
    schedule = f"{train.lr:g}, {train.lr_scheduler}, {train.warmup_steps} warm-up steps"
    rows = [
        ("learning rate", schedule),
        ("training length", length),
        (
            "batch size",
            f"{effective} ({train.micro_batch_size} per device x "
            f"{train.gradient_accumulation_steps} accumulation x {world} "
            f"process{'es' if world != 1 else ''})",
        ),
        ("optimizer", f"AdamW, weight decay {train.weight_decay:g}"),
        ("max grad norm", str(train.max_grad_norm)),
        ("precision", train.precision),
        ("seed", str(train.seed)),
    ]
    if train.gradient_checkpointing:
        rows.append(("gradient checkpointing", "on"))
    return rows


def _progress_rows(record: RunRecord) -> list[tuple[str, str]]:
    info = record.info
    rows: list[tuple[str, str]] = []
    world = info.get("world_size")
    hardware = info.get("hardware") or (
        f"{world} process{'es' if world != 1 else ''}" if world is not None else None
    )
    if hardware:
        engine = f", engine {info['engine']}" if info.get("engine") else ""
        zero = record.distributed.zero_stage if record.distributed else None
        rows.append(("hardware", f"{hardware}{engine}{f', ZeRO-{zero}' if zero else ''}"))
    steps = record.step if record.step is not None else info.get("global_step")
    if steps is not None:
        rows.append(("optimizer steps", str(steps)))
        if record.train is not None:
            world = int(info.get("world_size", 1))
            per_step = record.train.micro_batch_size * record.train.gradient_accumulation_steps
            rows.append(("samples seen", f"{steps * per_step * world:,}"))
    tokens = (
        info.get("tokens_seen")
        or info.get("num_input_tokens_seen")
        or _last(record.metrics, "num_input_tokens_seen")
    )
    if tokens:
        rows.append(("tokens seen", f"{int(tokens):,}"))
    if "trainable_parameters" in info and "total_parameters" in info:
        trainable, total = info["trainable_parameters"], info["total_parameters"]
        share = 100 * trainable / total if total else 0
        rows.append(("trainable parameters", f"{trainable:,} of {total:,} ({share:.2f}%)"))
    return rows


def _last(records: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in records if key in r]
    return values[-1] if values else None


def _card_results(record: RunRecord) -> str:
    """Final metrics (evaluation, training loss, exact match), and the same before training
    when the run evaluated the untrained model (`train.eval_untrained`)."""
    metrics = {**(record.info.get("untrained_metrics") or {}), **(record.info.get("metrics") or {})}
    if record.step is not None:  # a checkpoint: the latest logged values so far
        metrics = {k: _last(record.metrics, k) for k in ("loss", "eval_loss")}
    language_model_loss = record.info.get("objective", "sft") == "sft"
    if (
        isinstance(metrics.get("eval_loss"), (int, float))
        and "eval_perplexity" not in metrics
        and language_model_loss
    ):
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    shown = [
        (k, v)
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and k.startswith(("eval_", "untrained_", "exact_match", "train_loss", "loss"))
        and not k.endswith(("_runtime", "_per_second"))
    ]
    if not shown:
        return ""
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in shown)
    title = "Results" if record.step is None else "Results so far"
    return f"## {title}\n\n| metric | value |\n|---|---|\n{table}"


def _card_curve(record: RunRecord, has_curve: bool) -> str:
    if not has_curve:
        return ""
    by_step: dict[int, dict[str, float]] = {}
    for r in record.metrics:
        for key in ("loss", "eval_loss"):
            if key in r and "step" in r:
                by_step.setdefault(r["step"], {})[key] = r[key]
    steps = sorted(by_step)
    shown = steps[:: max(1, len(steps) // 12)]  # a readable table: about a dozen rows
    if shown[-1] != steps[-1]:
        shown.append(steps[-1])
    lines = [
        f"| {s} | {_fmt(by_step[s].get('loss'))} | {_fmt(by_step[s].get('eval_loss'))} |"
        for s in shown
    ]
    table = "| step | training loss | evaluation loss |\n|---|---|---|\n" + "\n".join(lines)
    return f"## Loss curve\n\n![Training and evaluation loss]({LOSS_CURVE})\n\n{table}"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""


def _card_versions(record: RunRecord) -> str:
    from importlib.metadata import PackageNotFoundError, version

    rows = []
    with suppress(PackageNotFoundError):
        rows.append(f"- finetune {version('finetune')}")
    if (record.config or {}).get("transformers_version"):
        rows.append(f"- transformers {record.config['transformers_version']}")
    if (record.adapter or {}).get("peft_version"):
        rows.append(f"- peft {record.adapter['peft_version']}")
    return "### Framework versions\n\n" + "\n".join(rows) if rows else ""
