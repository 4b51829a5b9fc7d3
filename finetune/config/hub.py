"""The `hub` section: publishing the trained model to the Hugging Face Hub."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from finetune.config.base import Section

# The Hub's rule for a repo id part: letters, digits, '-', '_', '.'; no '--' or '..', and no
# leading or trailing '-' or '.'.
_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
LEGACY_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")  # 'gpt2' style ids without namespace


def check_repo_id(value: str, namespace: bool = True) -> str:
    """Return `value` if it is a valid Hub repo id, else raise ValueError.

    Args:
        value: The id to check.
        namespace: Require NAMESPACE/NAME (a repo to push to); False also accepts the
            Hub's older ids without a namespace (`gpt2`), for repos that are only read.
    """
    if not (REPO_ID if namespace else LEGACY_REPO_ID).match(value):
        raise ValueError(
            f"{value!r} is not a Hub repo id; use NAMESPACE/NAME (a user or organization "
            "name, a slash, and letters, digits, '-', '_' or '.'), e.g. alice/tiny-llama"
        )
    return value


class HubConfig(Section):
    """Publish the trained model to the Hugging Face Hub (or the endpoint in HF_ENDPOINT).

    The token comes from the HF_TOKEN variable or `hf auth login`; it never belongs in a config.
    """

    push_to_hub: bool = False
    """Upload the final model, its tokenizer and a generated model card when training ends.
    `finetune push OUTPUT_DIR` does the same for a finished run."""

    repo_id: str | None = None
    """Target model repository, NAMESPACE/NAME; created when it does not exist."""

    private: bool | None = None
    """Create the repository private. None: the namespace's default (public for users).
    Ignored when the repository exists already."""

    revision: str | None = None
    """Branch to push to (created from main when missing). None: main."""

    strategy: Literal["end", "every_save"] = "end"
    """`end`: push once when training ends. `every_save`: also push each checkpoint's model
    (weights, config, tokenizer and card, no optimizer state) when it is saved; needs
    `output.save_steps`. Training waits for each upload; a failed checkpoint upload is logged
    and training goes on."""

    license: str = "apache-2.0"
    """License identifier written into the model card (a Hub license id such as `mit`, or
    `other`)."""

    base_model: str | None = None
    """Hub id of the model this run started from, for the model card and a LoRA adapter's
    `base_model_name_or_path`. None: taken from `model.name_or_path` when that is a Hub id.
    Set it when the run started from a local copy of a Hub model."""

    datasets: list[str] = Field(default_factory=list)
    """Hub dataset ids the model was trained on, listed in the model card's metadata."""

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        return None if value is None else check_repo_id(value)

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str | None) -> str | None:
        return None if value is None else check_repo_id(value, namespace=False)

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, value: list[str]) -> list[str]:
        return [check_repo_id(v, namespace=False) for v in value]

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value != value.strip() or " " in value):
            raise ValueError(f"{value!r} is not a branch name; use e.g. main or experiment-1")
        return value

    @model_validator(mode="after")
    def _repo_when_pushing(self) -> HubConfig:
        if self.push_to_hub and self.repo_id is None:
            raise ValueError(
                "hub.push_to_hub is true but hub.repo_id is not set; set hub.repo_id to "
                "NAMESPACE/NAME, or push_to_hub to false"
            )
        return self
