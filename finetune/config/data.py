"""Schema sections for the tokenizer and the data."""

from __future__ import annotations

import string
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from finetune.config.base import Section

# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------


class TokenizerTrainConfig(Section):
    """Train a byte-level BPE tokenizer on the run's training text."""

    vocab_size: int = Field(4096, ge=300)
    """Vocabulary size, special tokens and the 256 byte tokens included."""

    min_frequency: int = Field(2, ge=1)
    """A pair must occur this often to be merged."""

    max_texts: int | None = Field(None, ge=1)
    """Train on at most this many training texts (all when None)."""


class TokenizerConfig(Section):
    """Where the tokenizer comes from."""

    name_or_path: str | None = None
    """A tokenizer directory or Hub id. Defaults to `model.name_or_path`."""

    train: TokenizerTrainConfig | None = None
    """Train a new tokenizer from the training data instead of loading one."""

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerConfig:
        if self.name_or_path is not None and self.train is not None:
            raise ValueError("set at most one of tokenizer.name_or_path and tokenizer.train")
        return self


# --------------------------------------------------------------------------------------
# data formats: one class per `format.type`
# --------------------------------------------------------------------------------------

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
"""The Stanford Alpaca prompt for rows with an input."""

ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
"""The Stanford Alpaca prompt for rows whose input is missing or empty."""

ChatRole = Literal["system", "user", "assistant"]


class TextFormat(Section):
    """`text`: raw language modelling. The loss covers every token of the row and the EOS
    appended after it."""

    type: Literal["text"] = "text"

    text_field: str = "text"
    """Field holding the text (a .txt file yields one row per non-blank line)."""


class CompletionFormat(Section):
    """`completion`: a prompt and its completion, joined as `prompt + separator +
    completion + EOS`. The loss covers the completion and the EOS."""

    type: Literal["completion"] = "completion"

    prompt_field: str = "prompt"
    """Field holding the prompt."""

    completion_field: str = "completion"
    """Field holding the completion the model learns to write."""

    separator: str = ""
    """Text put between prompt and completion (counted as prompt), e.g. `"\\n"`."""

    train_on_prompt: bool = False
    """Put loss on the prompt tokens too."""


class AlpacaFormat(Section):
    """`alpaca`: instruction / input / output rows, rendered with the Alpaca prompt. The
    loss covers the output and the EOS appended after it."""

    type: Literal["alpaca"] = "alpaca"

    instruction_field: str = "instruction"
    """Field holding the instruction (required, non-empty)."""

    input_field: str = "input"
    """Field holding the optional input; missing, null or empty selects the no-input prompt."""

    output_field: str = "output"
    """Field holding the response the model learns to write."""

    prompt_template: str = ALPACA_PROMPT
    """Prompt for rows with an input, with `{instruction}` and `{input}` placeholders."""

    prompt_template_no_input: str = ALPACA_PROMPT_NO_INPUT
    """Prompt for rows without an input, with an `{instruction}` placeholder."""

    train_on_prompt: bool = False
    """Put loss on the prompt tokens too."""

    @field_validator("prompt_template", "prompt_template_no_input")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as err:
            raise ValueError(
                f"not a valid format string ({err}); write literal braces as {{{{ }}}}"
            ) from None
        unknown = names - {"instruction", "input"}
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; use {{instruction}} and {{input}}"
            )
        if "instruction" not in names:
            raise ValueError("the template must contain {instruction}")
        return value


class ChatFormat(Section):
    """`chat`: a list of turns (role + content), rendered with the tokenizer's chat template
    (ChatML when the tokenizer has none). The loss covers every assistant turn up to and
    including its end-of-turn token, and nothing else."""

    type: Literal["chat"] = "chat"

    messages_field: str = "messages"
    """Field holding the list of turns."""

    role_field: str = "role"
    """Key of a turn's role."""

    content_field: str = "content"
    """Key of a turn's text."""

    role_names: dict[str, ChatRole] = Field(default_factory=dict)
    """Map the data's role names to system/user/assistant, e.g. ShareGPT's
    `{system: system, human: user, gpt: assistant}`. Unmapped names are used as they are."""

    system_prompt: str | None = None
    """System turn put first in conversations that have none."""

    train_on_prompt: bool = False
    """Put loss on every token of the rendered conversation (system and user turns too)."""


class ClassificationFormat(Section):
    """`classification`: a text and its class, for `model.task: sequence_classification`."""

    type: Literal["classification"] = "classification"

    text_field: str = "text"
    """Field holding the text to classify."""

    label_field: str = "label"
    """Field holding the class: one of `labels`, or its index."""

    labels: list[str] = Field(min_length=2)
    """The class names, in id order; they become the model's `id2label`."""


class PreferenceFormat(Section):
    """`preference`: a prompt with a chosen and a rejected answer, for the `dpo` and
    `reward` objectives. Each field is a plain string, or a list of chat turns rendered with
    the tokenizer's chat template (the prompt's turns end with the generation prompt; the
    answers are the assistant turns after it). Without a prompt field, chosen and rejected
    are whole conversations and their shared opening turns are the prompt ("implicit
    prompt"). Plain-text answers end with EOS, as completions do."""

    type: Literal["preference"] = "preference"

    prompt_field: str = "prompt"
    """Field holding the prompt (a string or a list of turns). A row without it takes the
    turns chosen and rejected share as its prompt."""

    chosen_field: str = "chosen"
    """Field holding the preferred answer."""

    rejected_field: str = "rejected"
    """Field holding the dispreferred answer."""

    role_field: str = "role"
    """Key of a chat turn's role."""

    content_field: str = "content"
    """Key of a chat turn's text."""

    role_names: dict[str, ChatRole] = Field(default_factory=dict)
    """Map the data's role names to system/user/assistant (see the chat format)."""

    system_prompt: str | None = None
    """System turn put first in chat prompts that have none."""


class FeedbackFormat(Section):
    """`feedback`: a prompt, one answer and a label saying whether the answer is desirable,
    for the `kto` objective (unpaired feedback: thumbs up or down, no second answer to
    compare with). Prompt and answer are plain strings, or chat turns rendered with the
    tokenizer's chat template as in the preference format (a plain answer to a chat prompt
    is the assistant's turn). Plain-text answers end with EOS, as completions do."""

    type: Literal["feedback"] = "feedback"

    prompt_field: str = "prompt"
    """Field holding the prompt (a string or a list of turns)."""

    completion_field: str = "completion"
    """Field holding the answer (a string or a list of turns starting with the
    assistant's)."""

    label_field: str = "label"
    """Field holding the label: true (desirable) or false (undesirable); 1 and 0 are read
    as true and false."""

    role_field: str = "role"
    """Key of a chat turn's role."""

    content_field: str = "content"
    """Key of a chat turn's text."""

    role_names: dict[str, ChatRole] = Field(default_factory=dict)
    """Map the data's role names to system/user/assistant (see the chat format)."""

    system_prompt: str | None = None
    """System turn put first in chat prompts that have none."""


class PromptFormat(Section):
    """`prompt`: prompts alone, for the `grpo` and `rloo` objectives, which sample their
    answers while training. The prompt is a plain string, or a list of chat turns rendered
    with the tokenizer's chat template and its generation prompt. Every other field of a
    row is passed to the reward functions (e.g. the reference answer of an `exact_match`
    reward)."""

    type: Literal["prompt"] = "prompt"

    prompt_field: str = "prompt"
    """Field holding the prompt (a string or a list of turns)."""

    role_field: str = "role"
    """Key of a chat turn's role."""

    content_field: str = "content"
    """Key of a chat turn's text."""

    role_names: dict[str, ChatRole] = Field(default_factory=dict)
    """Map the data's role names to system/user/assistant (see the chat format)."""

    system_prompt: str | None = None
    """System turn put first in chat prompts that have none."""


FormatConfig = Annotated[
    TextFormat
    | CompletionFormat
    | AlpacaFormat
    | ChatFormat
    | ClassificationFormat
    | PreferenceFormat
    | FeedbackFormat
    | PromptFormat,
    Field(discriminator="type"),
]

# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


class DatasetConfig(Section):
    """One data source and how its rows are read."""

    path: str
    """A local .jsonl, .json, .csv, .parquet or .txt file, a local dataset directory, or a
    Hugging Face Hub dataset name (loaded with `datasets.load_dataset`; needs the Hub or
    HF_HUB_OFFLINE=1 with the dataset in the local cache)."""

    subset: str | None = None
    """Configuration name of a Hub dataset (`load_dataset(path, subset)`)."""

    split: str = "train"
    """Split of a Hub dataset or dataset directory to read."""

    format: FormatConfig = Field(default_factory=TextFormat)
    """How rows become tokens: `text`, `completion`, `alpaca`, `chat`, `classification`,
    `preference`, `feedback` or `prompt`, either as a name
    (`format: chat`) or as a mapping with `type` and the format's options
    (`format: {type: chat, messages_field: conversations}`)."""

    weight: float | None = Field(None, gt=0)
    """Mixing weight. The sources that set a weight share their combined row count in
    proportion to their weights (a source is subsampled, or repeated when it has too few
    rows). Sources with neither weight nor samples contribute every row once."""

    samples: int | None = Field(None, ge=1)
    """Take exactly this many rows from the source (subsampled, or repeated when it has
    fewer), after the evaluation split."""

    @field_validator("format", mode="before")
    @classmethod
    def _format_name(cls, value: Any) -> Any:
        # `format: chat` is shorthand for `format: {type: chat}`.
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_mix_rule(self) -> DatasetConfig:
        if self.weight is not None and self.samples is not None:
            raise ValueError("set at most one of weight and samples")
        return self


class DataConfig(Section):
    """Training and evaluation data."""

    train: list[DatasetConfig] = Field(min_length=1)
    """Training sources, mixed by their `weight` / `samples`."""

    eval: list[DatasetConfig] = Field(default_factory=list)
    """Held-out sources for evaluation loss. Empty: split `eval_ratio` off the training data."""

    eval_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of each training source held out for evaluation when `eval` is empty
    (seeded by `train.seed`; split before mixing, so repeated rows never leak into eval)."""

    max_length: int = Field(512, ge=8)
    """Longest tokenized sample, in tokens; longer rows are truncated (see `truncation`)."""

    truncation: Literal["right", "left"] = "right"
    """Which end of a too-long row is cut. `right` keeps the beginning: the answer (and
    later turns) gives way first. `left` keeps the end: the prompt (and earlier turns)
    gives way first. A row left without any trainable token is dropped and counted."""

    on_bad_row: Literal["error", "skip"] = "error"
    """A row that does not fit its format (missing field, wrong type, empty text, unknown
    role). `error` stops before training and lists the rows by file and line; `skip` drops
    them and reports how many."""

    packing: bool = False
    """Pack several samples into each row of `max_length` tokens (first-fit decreasing, no
    sample split), with position ids restarting per sample so samples never attend to
    each other. `train.micro_batch_size` then counts packed rows."""

    cache: bool = True
    """Reuse tokenized data from an earlier run with the same sources, format options,
    max_length, truncation and tokenizer."""

    cache_dir: str | None = None
    """Where tokenized data is cached. None: `$FINETUNE_CACHE/data`, else
    `~/.cache/finetune/data`."""

    @model_validator(mode="after")
    def _one_eval_source(self) -> DataConfig:
        if self.eval and self.eval_ratio > 0:
            raise ValueError(
                "set either eval (separate files) or eval_ratio (a split of train), not both"
            )
        return self
