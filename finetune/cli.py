"""The `finetune` command: thin commands over the Python API."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from finetune.errors import FinetuneError, StorageError, os_error_message
from finetune.workarounds import close_progress_bars, exit_launched_rank

DEBUG_ENV = "FINETUNE_DEBUG"
# Commands that never load torch (nor DeepSpeed): they start in well under a second.
TORCH_FREE_COMMANDS = frozenset({"push", "config"})


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a FinetuneError, or an OSError (a file that cannot be read or written), as one
    message without a traceback, and exit with its code. `finetune --debug` (or
    FINETUNE_DEBUG=1) shows the traceback instead, for bug reports."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            if isinstance(err, FinetuneError):
                message, code = str(err), err.exit_code
            elif (line := os_error_message(err)) is not None:
                message, code = line, StorageError.exit_code
            else:
                raise
            close_progress_bars()
            click.echo(f"error: {message}", err=True)
            if _launched_rank():
                exit_launched_rank(code)
            sys.exit(code)

    return wrapper


def _launched_rank() -> bool:
    """Whether this process is one rank of several a launcher started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


overrides_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set train.lr=1e-4 (repeatable; values are YAML).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--local_rank", "--local-rank", type=int, default=None, hidden=True)
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the full traceback of an error (for bug reports); also {DEBUG_ENV}=1.",
)
@click.version_option(package_name="finetune")
@click.pass_context
def cli(ctx: click.Context, local_rank: int | None, debug: bool) -> None:
    """Config-driven fine-tuning of Hugging Face models."""
    if ctx.invoked_subcommand not in TORCH_FREE_COMMANDS and not _has_cuda():
        # Name the accelerator DeepSpeed would pick anyway: its detection otherwise prints
        # a warning on stdout, which would corrupt the JSON that `eval` prints there.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if debug:
        os.environ[DEBUG_ENV] = "1"
    # The deepspeed launcher passes --local_rank before the subcommand; torchrun sets the
    # variable itself. Either way the rank reaches accelerate through LOCAL_RANK.
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    # finetune's own progress lines (data cache hits, packing efficiency, trainable
    # parameters) on stderr; other ranks stay quiet so multi-process logs stay readable.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[finetune] %(message)s"))
    package_logger = logging.getLogger("finetune")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's output directory.")
@click.option("--resume", is_flag=True, help="Continue from the latest complete checkpoint.")
@user_errors
def train(config: str, overrides: tuple[str, ...], overwrite: bool, resume: bool) -> None:
    """Train the model that CONFIG describes."""
    from finetune.config import load_config
    from finetune.train.report import format_report
    from finetune.train.runner import train as run

    cfg = load_config(config, overrides)
    summary = run(cfg, overwrite=overwrite, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(format_report(summary))
        click.echo(f"saved to {cfg.output.dir}")
    if _launched_rank():
        exit_launched_rank(0)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@user_errors
def validate(config: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and print it resolved, with every default filled in."""
    from finetune.config import dump_config, load_config

    click.echo(dump_config(load_config(config, overrides)), nl=False)


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--prompt",
    "prompts",
    required=True,
    multiple=True,
    help="Text to continue (or the user turn, with --chat). Repeat it for several prompts: "
    "the model loads once and each result is a JSON line {prompt, text}.",
)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template.")
@click.option("--system", default=None, help="System turn for --chat.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="0 decodes greedily; above 0 samples.",
)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample from the k best.")
@click.option("--top-p", type=click.FloatRange(0, 1), default=None, help="Nucleus sampling mass.")
@click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
@user_errors
def generate(
    model_dir: str,
    prompts: tuple[str, ...],
    chat: bool,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_beams: int,
    seed: int | None,
    trust_remote_code: bool,
) -> None:
    """Generate a continuation of each --prompt with the model saved in MODEL_DIR."""
    from transformers import set_seed

    from finetune.evaluate import generate_text, load_trained

    if seed is not None:
        set_seed(seed)
    model, tokenizer = load_trained(model_dir, trust_remote_code)
    for prompt in prompts:
        text = generate_text(
            model,
            tokenizer,
            prompt,
            chat=chat,
            system=system,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
        )
        click.echo(text if len(prompts) == 1 else json.dumps({"prompt": prompt, "text": text}))


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--text", required=True, help="The text whose attention is drawn.")
@click.option(
    "--target",
    default=None,
    help="Encoder-decoder models: the decoder's text (default: --text).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="attention.png",
    show_default=True,
    help="The PNG to write; an encoder-decoder writes OUT-encoder/-decoder/-cross.png.",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code to run.")
@user_errors
def attention(
    model_dir: str, text: str, target: str | None, out: str, trust_remote_code: bool
) -> None:
    """Draw the attention weights of every layer and head of MODEL_DIR on --text."""
    from finetune.attention import write_attention_maps

    for path in write_attention_maps(model_dir, text, out, target, trust_remote_code):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Dtype of the merged weights (a 4-bit base is dequantized to it).",
)
@user_errors
def merge(adapter_dir: str, out: str, dtype: str) -> None:
    """Merge the LoRA/QLoRA adapter in ADAPTER_DIR into its base and save a full model."""
    from pathlib import Path

    from finetune.methods.merge import merge_adapter

    if Path(out).exists() and any(Path(out).iterdir()):
        raise click.UsageError(f"--out {out} exists and is not empty; choose another directory")
    click.echo(f"merged model saved to {merge_adapter(adapter_dir, out, dtype)}")


@cli.command()
@click.argument("src_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write.")
@click.option(
    "--to",
    type=click.Choice(["decoder", "encoder", "seq2seq", "llama"]),
    default=None,
    help="Target architecture. Default: the only one the source converts to.",
)
@user_errors
def convert(src_dir: str, out: str, to: str | None) -> None:
    """Convert the checkpoint in SRC_DIR between Hugging Face and finetune architectures.

    Llama, Mistral and Qwen2 become `decoder`, BERT `encoder`, BART and Marian `seq2seq`;
    a Llama-compatible `decoder` becomes `llama` (loadable without remote code).
    """
    from pathlib import Path

    from finetune.models.convert import ConversionError, convert_checkpoint

    if Path(out).exists() and any(Path(out).iterdir()):
        raise click.UsageError(f"--out {out} exists and is not empty; choose another directory")
    try:
        click.echo(f"converted model saved to {convert_checkpoint(src_dir, out, to)}")
    except ConversionError as err:
        raise FinetuneError(str(err)) from None


@cli.command("eval")
@click.argument("target", type=click.Path())
@overrides_option
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Model to evaluate. Default: the run's output.dir.",
)
@user_errors
def eval_command(target: str, overrides: tuple[str, ...], model_dir: str | None) -> None:
    """Loss and perplexity of a trained model on a run's evaluation data (with a preference
    objective: how often it prefers the chosen answer; with grpo or rloo: exact match
    only), and exact match when configured.

    TARGET is a run config, or a run's output directory (its run_config.yaml is used).
    """
    from pathlib import Path

    from finetune.config import load_config
    from finetune.evaluate import evaluate_model
    from finetune.layout import RUN_CONFIG

    path = Path(target)
    if path.is_dir():  # a run's output directory: its config, and the model saved in it
        config, model_dir = path / RUN_CONFIG, model_dir or str(path)
    else:
        config = path
    cfg = load_config(config, overrides)
    metrics = evaluate_model(cfg, model_dir or cfg.output.dir)
    click.echo(json.dumps(metrics, indent=2))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@click.option(
    "--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs per node."
)
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--gpu-memory-gb",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Memory of one GPU: say which ZeRO stage fits.",
)
@user_errors
def estimate(
    config: str, overrides: tuple[str, ...], gpus: int, nodes: int, gpu_memory_gb: float | None
) -> None:
    """Model-state memory per GPU and per node for each ZeRO stage (DeepSpeed's estimators),
    counted on CONFIG's model built on the meta device."""
    from finetune.config import load_config
    from finetune.distributed.estimate import (
        estimate_stages,
        format_estimate,
        meta_model,
        parameter_counts,
    )

    total, largest = parameter_counts(meta_model(load_config(config, overrides)))
    rows = estimate_stages(total, largest, gpus, nodes)
    click.echo(f"{nodes} node(s) x {gpus} GPU(s)")
    click.echo(format_estimate(total, largest, rows, gpu_memory_gb))


@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_command(as_json: bool) -> None:
    """Print versions, devices and CPU features for a bug report."""
    from finetune.environment import collect, format_report

    report = collect()
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report), nl=as_json)


@cli.group("config")
def config_group() -> None:
    """Inspect the run schema."""


@config_group.command("schema")
def config_schema() -> None:
    """Print the run schema as JSON Schema, with every field documented."""
    from finetune.config import RunConfig

    click.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@user_errors
def preprocess(config: str, overrides: tuple[str, ...]) -> None:
    """Read, check and tokenize CONFIG's data without training; print a summary.

    Fills the data cache, so a following `finetune train` starts straight away.
    """
    from finetune.config import load_config
    from finetune.data import format_summary
    from finetune.data import preprocess as run

    click.echo(format_summary(run(load_config(config, overrides))), nl=False)


@cli.group("tokenizer")
def tokenizer_group() -> None:
    """Train tokenizers."""


@tokenizer_group.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory to save the tokenizer to. Default: OUTPUT_DIR-tokenizer next to output.dir.",
)
@user_errors
def tokenizer_train(config: str, overrides: tuple[str, ...], out: str | None) -> None:
    """Train CONFIG's tokenizer (tokenizer.train) on its training data, save it, and report
    its compression on held-out text."""
    from finetune.config import load_config
    from finetune.data import train_tokenizer_with_report

    cfg = load_config(config, overrides)
    tokenizer, report = train_tokenizer_with_report(cfg.tokenizer, cfg.data)
    out = out or f"{cfg.output.dir.rstrip('/')}-tokenizer"
    tokenizer.save_pretrained(out)
    click.echo(f"saved to {out} (vocabulary {report.vocab_size}, {report.train_texts} texts)")
    click.echo(
        f"held-out compression: {report.bytes_per_token:.2f} bytes per token "
        f"({report.heldout_bytes} bytes, {report.heldout_tokens} tokens, "
        f"{report.heldout_texts} texts)"
    )
    click.echo(f"use it with: --set tokenizer.name_or_path={out} tokenizer.train=null")


@cli.command()
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option(
    "--repo-id", default=None, help="Target NAMESPACE/NAME. Default: the run's hub.repo_id."
)
@click.option(
    "--private", is_flag=True, default=None, help="Create the repository private (if it is new)."
)
@click.option("--revision", default=None, metavar="BRANCH", help="Branch to push to (created).")
@click.option("--commit-message", default=None, help="Message of the Hub commit.")
@click.option("--license", "license_", default=None, help="Model card license (apache-2.0).")
@click.option(
    "--base-model",
    default=None,
    metavar="REPO_ID",
    help="Hub id of the model the run started from, when it started from a local copy.",
)
@click.option("--dry-run", is_flag=True, help="Print the files and the model card; upload nothing.")
@user_errors
def push(
    output_dir: str,
    repo_id: str | None,
    private: bool | None,
    revision: str | None,
    commit_message: str | None,
    license_: str | None,
    base_model: str | None,
    dry_run: bool,
) -> None:
    """Publish OUTPUT_DIR (a finished run) to the Hugging Face Hub with a model card.

    The token comes from HF_TOKEN or `hf auth login`. Only the model (safetensors weights,
    config, remote code, tokenizer, LoRA adapter) and the generated card are uploaded; files
    the Hub already holds are skipped.
    """
    from pathlib import Path

    from finetune.hub import hub_config_for, preview
    from finetune.hub import push as run

    out = Path(output_dir)
    hub = hub_config_for(
        out,
        repo_id=repo_id,
        private=private,
        revision=revision,
        license=license_,
        base_model=base_model,
    )
    if dry_run:
        click.echo(preview(out, hub), nl=False)
        return
    result = run(out, hub, commit_message=commit_message)
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.changed:
        click.echo(f"pushed {out} to {result.repo_id}@{result.revision}: {result.commit_url}")
    else:
        click.echo(f"{result.repo_id}@{result.revision} already holds these files; nothing sent")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="finetune")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
