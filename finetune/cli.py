"""The `finetune` command: thin commands over the Python API."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from finetune.errors import FinetuneError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a FinetuneError as one message, no traceback, and exit with its code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FinetuneError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


overrides_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set train.lr=1e-4 (repeatable; values are YAML).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--local_rank", "--local-rank", type=int, default=None, hidden=True)
@click.version_option(package_name="finetune")
def cli(local_rank: int | None) -> None:
    """Config-driven fine-tuning of Hugging Face models."""
    # The deepspeed launcher passes --local_rank before the subcommand; torchrun sets the
    # variable itself. Either way the rank reaches accelerate through LOCAL_RANK.
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's output directory.")
@click.option("--resume", is_flag=True, help="Continue from the latest complete checkpoint.")
@user_errors
def train(config: str, overrides: tuple[str, ...], overwrite: bool, resume: bool) -> None:
    """Train the model that CONFIG describes."""
    from finetune.config import load_config
    from finetune.train import train as run

    cfg = load_config(config, overrides)
    summary = run(cfg, overwrite=overwrite, resume=resume)
    if summary["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"saved to {cfg.output.dir}")
        click.echo(json.dumps(summary["metrics"], indent=2))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_option
@user_errors
def validate(config: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and print it resolved, with every default filled in."""
    from finetune.config import dump_config, load_config

    click.echo(dump_config(load_config(config, overrides)), nl=False)


@cli.group("config")
def config_group() -> None:
    """Inspect the run schema."""


@config_group.command("schema")
def config_schema() -> None:
    """Print the run schema as JSON Schema, with every field documented."""
    from finetune.config import RunConfig

    click.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="finetune")


if __name__ == "__main__":
    main()
