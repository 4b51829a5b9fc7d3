"""Turn a row of each data format into token ids and a per-token loss mask.

Every format renders its row to text with known character spans that carry loss, then
tokenizes the whole text once and marks the tokens that overlap those spans (a token
that straddles the prompt/answer boundary, such as " Paris" after "Answer:", carries
loss). Masks never come from comparing ids with the pad id: SmolLM2's pad token is its
end-of-turn token, which must keep its label.

Formats are looked up by name in `ENCODERS` (and `TEXTS`, the plain text used to train a
tokenizer), so adding one means adding a config class and two functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from finetune.config.data import (
    AlpacaFormat,
    ChatFormat,
    ClassificationFormat,
    CompletionFormat,
    DatasetConfig,
    FeedbackFormat,
    FormatConfig,
    PreferenceFormat,
    PromptFormat,
    TextFormat,
)
from finetune.data.sources import InvalidRow, iter_rows

ROLES = ("system", "user", "assistant")
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class BadRow(Exception):
    """A row that does not fit its format; the message says what is wrong with it."""


@dataclass
class Encoded:
    """A tokenized row: ids and, per id, whether it carries loss."""

    input_ids: list[int]
    trainable: list[bool]
    label: int | None = None
    """The class index of a classification row (its tokens carry no loss of their own)."""


@dataclass
class EncodedPair:
    """A tokenized preference row: the prompt, and the chosen and rejected answers that
    follow it (each a sequence `prompt_ids + answer_ids` as the model reads it)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class EncodedFeedback:
    """A tokenized feedback row: the prompt, the answer after it, and whether the answer
    is desirable."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool


@dataclass
class EncodedPrompt:
    """A tokenized prompt-only row: the prompt's ids, the prompt as the reward functions
    see it (a string or checked chat turns) and the row's other fields, both as JSON."""

    prompt_ids: list[int]
    prompt: str
    extras: str


def encode_row(
    row: Any, fmt: FormatConfig, tokenizer: PreTrainedTokenizerBase
) -> Encoded | EncodedPair | EncodedFeedback | EncodedPrompt:
    """Tokenize one row of format `fmt`, marking the tokens that carry loss (a preference
    or feedback row: splitting it into prompt and answers).

    Raises:
        BadRow: the row does not fit the format (missing field, wrong type, empty text,
            unknown role...).
    """
    return ENCODERS[fmt.type](_as_record(row), fmt, tokenizer)


def row_text(row: Any, fmt: FormatConfig) -> str:
    """The row's plain text (prompt and answer), used to train a tokenizer.

    Raises:
        BadRow: the row does not fit the format.
    """
    return TEXTS[fmt.type](_as_record(row), fmt)


def keep_side(text: str, max_chars: int, side: str) -> str:
    """`text` cut to `max_chars` characters, keeping the side truncation keeps: the start
    for `right`, the end for `left`."""
    if len(text) <= max_chars:
        return text
    return text[-max_chars:] if side == "left" else text[:max_chars]


def iter_texts(
    sources: list[DatasetConfig],
    limit: int | None = None,
    max_chars: int | None = None,
    side: str = "right",
) -> Iterator[str]:
    """Plain text of the sources' rows in order (bad rows skipped: the data build reports
    them), for training a tokenizer; each cut to `max_chars`, keeping the side truncation
    keeps (a 50 MB row is mostly text no training sequence will hold, and one very long
    word makes BPE training crawl)."""
    count = 0
    for source in sources:
        for _, row in iter_rows(source):
            if limit is not None and count >= limit:
                return
            try:
                text = row_text(row, source.format)
            except BadRow:
                continue
            yield text if max_chars is None else keep_side(text, max_chars, side)
            count += 1


def _as_record(row: Any) -> dict[str, Any]:
    if isinstance(row, InvalidRow):
        raise BadRow(row.message)
    if not isinstance(row, dict):
        raise BadRow(f"expected an object with named fields, got {type(row).__name__}")
    return row


def _field(row: dict[str, Any], name: str, option: str, required: bool = True) -> str:
    """A string field; `option` is the format option that names it, for the hint."""
    if name not in row:
        if not required:
            return ""
        keys = ", ".join(map(str, row)) or "none"
        raise BadRow(f"missing field {name!r} (fields: {keys}); set format.{option} if it differs")
    value = row[name]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRow(f"field {name!r} is empty")
    return value


# --------------------------------------------------------------------------------------
# text, completion, alpaca: a prompt segment and an answer segment, then EOS
# --------------------------------------------------------------------------------------


def encode_segments(
    segments: list[tuple[str, bool]], tokenizer: PreTrainedTokenizerBase
) -> Encoded:
    """Tokenize the concatenated segments with the tokenizer's own special tokens (a BOS,
    where it adds one) and end with EOS, which carries loss when the last segment does.

    Args:
        segments: `(text, carries_loss)` pieces in order.
        tokenizer: a fast tokenizer (offsets locate the segments).
    """
    text = "".join(piece for piece, _ in segments)
    spans, start = [], 0
    for piece, trainable in segments:
        if trainable:
            spans.append((start, start + len(piece)))
        start += len(piece)
    encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    trainable = [_overlaps(span, spans) for span in encoding["offset_mapping"]]
    answer_trains = segments[-1][1]
    if ids and ids[-1] == tokenizer.eos_token_id:  # the tokenizer appended EOS itself
        trainable[-1] = answer_trains
    else:
        ids.append(tokenizer.eos_token_id)
        trainable.append(answer_trains)
    return Encoded(ids, trainable)


def _overlaps(token: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = token
    if start == end:  # a zero-width token (an added BOS) belongs where it stands
        return any(a <= start < b for a, b in spans)
    return any(start < b and a < end for a, b in spans)


def _encode_text(row: dict[str, Any], fmt: TextFormat, tok: PreTrainedTokenizerBase) -> Encoded:
    return encode_segments([(_text_text(row, fmt), True)], tok)


def _text_text(row: dict[str, Any], fmt: TextFormat) -> str:
    return _field(row, fmt.text_field, "text_field")


def _encode_completion(
    row: dict[str, Any], fmt: CompletionFormat, tok: PreTrainedTokenizerBase
) -> Encoded:
    prompt, completion = _completion_parts(row, fmt)
    return encode_segments([(prompt, fmt.train_on_prompt), (completion, True)], tok)


def _completion_parts(row: dict[str, Any], fmt: CompletionFormat) -> tuple[str, str]:
    prompt = _field(row, fmt.prompt_field, "prompt_field")
    completion = _field(row, fmt.completion_field, "completion_field")
    return prompt + fmt.separator, completion


def _completion_text(row: dict[str, Any], fmt: CompletionFormat) -> str:
    return "".join(_completion_parts(row, fmt))


def _encode_alpaca(row: dict[str, Any], fmt: AlpacaFormat, tok: PreTrainedTokenizerBase) -> Encoded:
    prompt, output = _alpaca_parts(row, fmt)
    return encode_segments([(prompt, fmt.train_on_prompt), (output, True)], tok)


def _alpaca_parts(row: dict[str, Any], fmt: AlpacaFormat) -> tuple[str, str]:
    instruction = _field(row, fmt.instruction_field, "instruction_field")
    extra = _field(row, fmt.input_field, "input_field", required=False)
    output = _field(row, fmt.output_field, "output_field")
    if extra.strip():
        prompt = fmt.prompt_template.format(instruction=instruction, input=extra)
    else:
        prompt = fmt.prompt_template_no_input.format(instruction=instruction)
    return prompt, output


def _alpaca_text(row: dict[str, Any], fmt: AlpacaFormat) -> str:
    return "".join(_alpaca_parts(row, fmt))


def prompt_and_answer(
    row: dict[str, Any], fmt: FormatConfig, tok: PreTrainedTokenizerBase
) -> tuple[str, str]:
    """The prompt a model is given at generation time and the reference answer, built as
    training builds them: a completion's prompt and separator, an alpaca prompt template,
    or a chat's turns before its last assistant turn (with the generation prompt).

    Raises:
        ValueError: `fmt` has no answers (`text`, classification formats).
    """
    if isinstance(fmt, CompletionFormat):
        return _completion_parts(row, fmt)
    if isinstance(fmt, AlpacaFormat):
        return _alpaca_parts(row, fmt)
    if isinstance(fmt, ChatFormat):
        messages = chat_messages(row, fmt)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = tok.apply_chat_template(
            messages[:last], add_generation_prompt=True, tokenize=False
        )
        return prompt, messages[last]["content"]
    if isinstance(fmt, PreferenceFormat):  # the chosen answer is the reference
        prompt, chosen, _ = preference_parts(row, fmt)
        if isinstance(prompt, str):
            return prompt, chosen
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return text, chosen[0]["content"]
    raise ValueError(f"format {fmt.type!r} has no answers")


# --------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------


def chat_messages(row: dict[str, Any], fmt: ChatFormat) -> list[dict[str, str]]:
    """The row's turns as `{"role", "content"}` dicts, roles mapped and checked.

    Raises:
        BadRow: not a list of turns, a turn without role or text, an unknown role, a
            system turn after the first, a conversation opening with the assistant, or
            no assistant turn at all.
    """
    if fmt.messages_field not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise BadRow(
            f"missing field {fmt.messages_field!r} (fields: {keys}); "
            "set format.messages_field if it differs"
        )
    turns = row[fmt.messages_field]
    if not isinstance(turns, list):
        raise BadRow(f"field {fmt.messages_field!r} must be a list of turns")
    if not turns:
        raise BadRow(f"field {fmt.messages_field!r} is empty")
    messages = [_turn(turn, number, fmt) for number, turn in enumerate(turns, start=1)]
    if fmt.system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fmt.system_prompt})
    for number, message in enumerate(messages[1:], start=2):
        if message["role"] == "system":
            raise BadRow(f"turn {number} is a system turn; only the first turn may be")
    first = next(m for m in messages if m["role"] != "system")
    if first["role"] == "assistant":
        raise BadRow("the conversation opens with an assistant turn; start with a user turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn, so nothing to learn")
    return messages


def _turn(turn: Any, number: int, fmt: ChatFormat) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise BadRow(
            f"turn {number} must be an object with {fmt.role_field!r} and "
            f"{fmt.content_field!r}, got {type(turn).__name__}"
        )
    if fmt.role_field not in turn:
        raise BadRow(f"turn {number}: missing field {fmt.role_field!r}")
    role = turn[fmt.role_field]
    role = fmt.role_names.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise BadRow(
            f"turn {number}: unknown role {turn[fmt.role_field]!r}; expected system, user or "
            "assistant (map other names with format.role_names)"
        )
    if fmt.content_field not in turn:
        raise BadRow(f"turn {number}: missing field {fmt.content_field!r}")
    content = turn[fmt.content_field]
    if not isinstance(content, str):
        raise BadRow(
            f"turn {number}: {fmt.content_field!r} must be a string, got {type(content).__name__}"
        )
    if not content.strip():
        raise BadRow(f"turn {number}: {fmt.content_field!r} is empty")
    return {"role": role, "content": content}


def _encode_chat(row: dict[str, Any], fmt: ChatFormat, tok: PreTrainedTokenizerBase) -> Encoded:
    return encode_messages(chat_messages(row, fmt), tok, fmt.train_on_prompt)


def encode_messages(
    messages: list[dict[str, str]], tok: PreTrainedTokenizerBase, train_on_prompt: bool = False
) -> Encoded:
    """Tokenize checked chat turns with the tokenizer's chat template; the loss covers the
    assistant turns (every token with `train_on_prompt`).

    Raises:
        BadRow: the template rejects the conversation, or its assistant turns cannot be
            located.
    """
    from jinja2 import TemplateError

    try:
        if train_on_prompt:
            ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            return Encoded(list(ids), [True] * len(ids))
        if GENERATION_MARKER.search(tok.get_chat_template()):
            out = tok.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            return Encoded(list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]])
        return _encode_chat_by_prefix(messages, tok)
    except TemplateError as err:
        raise BadRow(f"the chat template rejected this conversation: {err}") from None


def _encode_chat_by_prefix(messages: list[dict[str, str]], tok: PreTrainedTokenizerBase) -> Encoded:
    """Assistant spans from rendering growing prefixes of the conversation.

    An assistant turn runs from the end of `render(turns before it, generation prompt)` to
    the end of `render(turns up to it)`. Whatever the template writes after the turn's
    last special token (ChatML's newline after <|im_end|>) is not something the model
    generates, so it carries no loss.
    """
    text = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        turn = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(turn) and turn.startswith(head)):
            raise BadRow(
                f"the tokenizer's chat template does not render turn {i + 1} as a prefix of "
                "the conversation, so its span cannot be located; use a template with "
                "{% generation %} markers"
            )
        spans.append((len(head), len(turn)))
    encoding = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    trainable = [False] * len(ids)
    special = _special_ids(tok)
    for span in spans:
        members = [j for j, off in enumerate(offsets) if _overlaps(off, [span])]
        ends = [j for j in members if ids[j] in special]
        last = ends[-1] if ends else (members[-1] if members else -1)
        for j in members:
            trainable[j] = j <= last
    return Encoded(ids, trainable)


def _special_ids(tok: PreTrainedTokenizerBase) -> set[int]:
    added = {i for i, token in tok.added_tokens_decoder.items() if token.special}
    return added | set(tok.all_special_ids)


def _chat_text(row: dict[str, Any], fmt: ChatFormat) -> str:
    return "\n".join(m["content"] for m in chat_messages(row, fmt))


# --------------------------------------------------------------------------------------
# preference: a prompt, a chosen and a rejected answer
# --------------------------------------------------------------------------------------

Turns = list[dict[str, str]]
AnswerFormat = PreferenceFormat | FeedbackFormat | PromptFormat


def preference_parts(row: dict[str, Any], fmt: PreferenceFormat) -> tuple[Any, Any, Any]:
    """The row's prompt, chosen and rejected answers: three strings, or three lists of
    checked chat turns (the prompt's ending before an assistant turn, each answer's
    starting with one). Without a prompt field, the turns shared by two conversations
    are the prompt.

    Raises:
        BadRow: a missing or empty field, strings mixed with turns, an answer that is not
            an assistant turn, or two answers that are the same.
    """
    chosen = _answer(row, fmt.chosen_field, "chosen_field", fmt)
    rejected = _answer(row, fmt.rejected_field, "rejected_field", fmt)
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise BadRow("chosen and rejected must both be strings or both be lists of turns")
    if fmt.prompt_field in row:
        prompt = row[fmt.prompt_field]
        if isinstance(prompt, list):
            prompt = _turns(prompt, fmt.prompt_field, fmt)
            # A plain answer to a chat prompt is the assistant's turn.
            chosen, rejected = (
                [{"role": "assistant", "content": a}] if isinstance(a, str) else a
                for a in (chosen, rejected)
            )
        elif isinstance(chosen, list):
            raise BadRow(
                f"field {fmt.prompt_field!r} is a string but the answers are lists of turns; "
                "give the prompt as turns too"
            )
        else:
            prompt = _field(row, fmt.prompt_field, "prompt_field")
    elif isinstance(chosen, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    else:
        keys = ", ".join(map(str, row)) or "none"
        raise BadRow(
            f"missing field {fmt.prompt_field!r} (fields: {keys}); set format.prompt_field, or "
            "give chosen and rejected as whole conversations that share their prompt turns"
        )
    if chosen == rejected:
        raise BadRow("chosen and rejected are the same answer")
    if isinstance(prompt, list):
        _add_system_prompt(prompt, fmt.system_prompt)
        fields = f"{fmt.chosen_field!r} and {fmt.rejected_field!r}"
        _check_dialogue(prompt, chosen, fields)
        _check_dialogue(prompt, rejected, fields)
    return prompt, chosen, rejected


def _add_system_prompt(prompt: Turns, system_prompt: str | None) -> None:
    if system_prompt is not None and (not prompt or prompt[0]["role"] != "system"):
        prompt.insert(0, {"role": "system", "content": system_prompt})


def _answer(row: dict[str, Any], name: str, option: str, fmt: AnswerFormat) -> Any:
    if isinstance(row.get(name), list):
        return _turns(row[name], name, fmt)
    return _field(row, name, option)


def _turns(turns: list[Any], name: str, fmt: AnswerFormat) -> Turns:
    if not turns:
        raise BadRow(f"field {name!r} is an empty list of turns")
    try:
        return [_turn(turn, number, fmt) for number, turn in enumerate(turns, start=1)]
    except BadRow as err:
        raise BadRow(f"field {name!r}: {err}") from None


def _check_dialogue(prompt: Turns, answer: Turns, fields: str) -> None:
    if not answer or answer[0]["role"] != "assistant":
        raise BadRow(
            "an answer must start with an assistant turn (after the prompt's turns); "
            f"check the roles of {fields}"
        )
    _check_prompt(prompt, answer)


def _check_prompt(prompt: Turns, answer: Turns | None = None) -> None:
    """A chat prompt has a user turn and ends with one; only the first turn of the
    conversation (prompt, then `answer`) may be a system turn."""
    if not any(turn["role"] == "user" for turn in prompt):
        raise BadRow("the prompt has no user turn")
    if prompt[-1]["role"] == "assistant":
        raise BadRow("the prompt ends with an assistant turn; it must end with the user's")
    for number, turn in enumerate(prompt + (answer or []), start=1):
        if turn["role"] == "system" and number > 1:
            raise BadRow(f"turn {number} is a system turn; only the first turn may be")


def _encode_preference(
    row: dict[str, Any], fmt: PreferenceFormat, tok: PreTrainedTokenizerBase
) -> EncodedPair:
    prompt, chosen, rejected = preference_parts(row, fmt)
    return split_pair(*_encode_answers(prompt, [chosen, rejected], tok))


def _encode_answers(
    prompt: str | Turns, answers: list[Any], tok: PreTrainedTokenizerBase
) -> tuple[list[int], list[Encoded]]:
    """The prompt's ids, and each answer encoded as the whole sequence after the prompt."""
    if isinstance(prompt, list):
        prompt_ids = _chat_prompt_ids(tok, prompt, "prompt and answers")
        return prompt_ids, [encode_messages(prompt + answer, tok) for answer in answers]
    encoded = [encode_segments([(prompt, False), (answer, True)], tok) for answer in answers]
    # A token that merges across the prompt/answer boundary carries loss, so it belongs to
    # the answer: the prompt ends before any answer's first such token.
    prompt_ids = min(
        (e.input_ids[: e.trainable.index(True)] for e in encoded if True in e.trainable),
        key=len,
        default=[],
    )
    return prompt_ids, encoded


def _chat_prompt_ids(tok: PreTrainedTokenizerBase, prompt: Turns, plain: str) -> list[int]:
    """The ids of a chat prompt as generation starts from it (its turns, then the
    generation prompt).

    Raises:
        BadRow: the tokenizer has no chat template (`plain`: what to give as text instead),
            or the template rejects the turns.
    """
    if tok.chat_template is None:
        raise BadRow(
            "this row is chat turns but the tokenizer has no chat template; use a "
            f"tokenizer with one, or give {plain} as plain text"
        )
    return _template_ids(tok, prompt, add_generation_prompt=True)


def _template_ids(tok: PreTrainedTokenizerBase, messages: Turns, **options: Any) -> list[int]:
    from jinja2 import TemplateError

    try:
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, **options)
    except TemplateError as err:
        raise BadRow(f"the chat template rejected this conversation: {err}") from None
    return list(out["input_ids"])


def split_pair(prompt_ids: list[int], pair: list[Encoded]) -> EncodedPair:
    """The shared prompt and the two answers of two encoded sequences (chosen, rejected),
    as `split_answers` splits them."""
    prompt, (chosen, rejected) = split_answers(prompt_ids, pair)
    return EncodedPair(prompt, chosen, rejected)


def split_answers(
    prompt_ids: list[int], encoded: list[Encoded]
) -> tuple[list[int], list[list[int]]]:
    """The shared prompt and the answers of encoded sequences that share it.

    The answers start where the sequences stop agreeing with `prompt_ids` (and with each
    other); they end at their last trainable token, so a chat template's text after the
    end-of-turn token is left out, as in SFT.

    Raises:
        BadRow: an answer holds no token of its own.
    """
    first = encoded[0].input_ids
    start = min(_common_prefix(prompt_ids, e.input_ids) for e in encoded)
    start = min([start, *(_common_prefix(first, e.input_ids) for e in encoded[1:])])
    answers = []
    for e in encoded:
        end = len(e.trainable) - e.trainable[::-1].index(True) if True in e.trainable else 0
        answers.append(e.input_ids[start:end])
    if not all(answers):
        raise BadRow("an answer tokenizes to nothing after the prompt")
    return first[:start], answers


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _preference_text(row: dict[str, Any], fmt: PreferenceFormat) -> str:
    parts = preference_parts(row, fmt)
    return "\n".join(
        part if isinstance(part, str) else "\n".join(t["content"] for t in part) for part in parts
    )


# --------------------------------------------------------------------------------------
# feedback: a prompt, one answer and whether it is desirable
# --------------------------------------------------------------------------------------

LABEL_WORDS = {"true": True, "false": False}


def feedback_parts(row: dict[str, Any], fmt: FeedbackFormat) -> tuple[Any, Any, bool]:
    """The row's prompt and answer (two strings, or two lists of checked chat turns) and
    its label.

    Raises:
        BadRow: a missing or empty field, a prompt string with an answer in turns, an
            answer that is not an assistant turn, or a label that is not true or false.
    """
    completion = _answer(row, fmt.completion_field, "completion_field", fmt)
    label = _feedback_label(row, fmt)
    if isinstance(row.get(fmt.prompt_field), list):
        prompt = _turns(row[fmt.prompt_field], fmt.prompt_field, fmt)
        if isinstance(completion, str):  # a plain answer to a chat prompt
            completion = [{"role": "assistant", "content": completion}]
        _add_system_prompt(prompt, fmt.system_prompt)
        _check_dialogue(prompt, completion, repr(fmt.completion_field))
        return prompt, completion, label
    prompt = _field(row, fmt.prompt_field, "prompt_field")
    if isinstance(completion, list):
        raise BadRow(
            f"field {fmt.prompt_field!r} is a string but {fmt.completion_field!r} is a list "
            "of turns; give the prompt as turns too"
        )
    return prompt, completion, label


def _feedback_label(row: dict[str, Any], fmt: FeedbackFormat) -> bool:
    if fmt.label_field not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise BadRow(
            f"missing field {fmt.label_field!r} (fields: {keys}); set format.label_field if "
            "it differs"
        )
    value = row[fmt.label_field]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise BadRow(
        f"label_field {fmt.label_field!r} is {value!r}; expected true (a desirable answer) "
        "or false (an undesirable one)"
    )


def _encode_feedback(
    row: dict[str, Any], fmt: FeedbackFormat, tok: PreTrainedTokenizerBase
) -> EncodedFeedback:
    prompt, completion, label = feedback_parts(row, fmt)
    prompt_ids, (answer,) = split_answers(*_encode_answers(prompt, [completion], tok))
    return EncodedFeedback(prompt_ids, answer, label)


def _feedback_text(row: dict[str, Any], fmt: FeedbackFormat) -> str:
    prompt, completion, _ = feedback_parts(row, fmt)
    return "\n".join(
        part if isinstance(part, str) else "\n".join(t["content"] for t in part)
        for part in (prompt, completion)
    )


# --------------------------------------------------------------------------------------
# prompt: a prompt alone (the model writes the answers), and fields for the rewards
# --------------------------------------------------------------------------------------


def prompt_parts(row: dict[str, Any], fmt: PromptFormat) -> tuple[Any, dict[str, Any]]:
    """The row's prompt (a string, or checked chat turns ending with a user turn) and its
    other fields.

    Raises:
        BadRow: a missing or empty prompt, bad turns, a prompt ending with the
            assistant's turn, or a system turn that is not the first.
    """
    value = row.get(fmt.prompt_field)
    if isinstance(value, list):
        prompt: Any = _turns(value, fmt.prompt_field, fmt)
        _add_system_prompt(prompt, fmt.system_prompt)
        _check_prompt(prompt)
    else:
        prompt = _field(row, fmt.prompt_field, "prompt_field")
    return prompt, {k: v for k, v in row.items() if k != fmt.prompt_field}


def _encode_prompt(
    row: dict[str, Any], fmt: PromptFormat, tok: PreTrainedTokenizerBase
) -> EncodedPrompt:
    prompt, extras = prompt_parts(row, fmt)
    try:
        extras_json = json.dumps(extras, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise BadRow(f"a field cannot be passed to the reward functions: {err}") from None
    if isinstance(prompt, list):
        ids = _chat_prompt_ids(tok, prompt, "the prompt")
    else:
        ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
        if len(ids) > 1 and ids[-1] == tok.eos_token_id:  # the model writes what follows
            ids.pop()
    return EncodedPrompt(ids, json.dumps(prompt, ensure_ascii=False), extras_json)


def _prompt_text(row: dict[str, Any], fmt: PromptFormat) -> str:
    prompt, _ = prompt_parts(row, fmt)
    return prompt if isinstance(prompt, str) else "\n".join(t["content"] for t in prompt)


Encoder = Callable[
    [dict[str, Any], Any, PreTrainedTokenizerBase],
    Encoded | EncodedPair | EncodedFeedback | EncodedPrompt,
]


def _encode_classification(
    row: dict[str, Any], fmt: ClassificationFormat, tok: PreTrainedTokenizerBase
) -> Encoded:
    ids = tok(_field(row, fmt.text_field, "text_field"))["input_ids"]
    value = row.get(fmt.label_field)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(fmt.labels):
        label = value
    elif isinstance(value, str) and value in fmt.labels:
        label = fmt.labels.index(value)
    else:
        raise BadRow(
            f"label_field {fmt.label_field!r} is {value!r}; expected one of {fmt.labels} "
            f"or an index below {len(fmt.labels)}"
        )
    return Encoded(ids, [False] * len(ids), label)


def _classification_text(row: dict[str, Any], fmt: ClassificationFormat) -> str:
    return _field(row, fmt.text_field, "text_field")


ENCODERS: dict[str, Encoder] = {
    "text": _encode_text,
    "completion": _encode_completion,
    "alpaca": _encode_alpaca,
    "chat": _encode_chat,
    "classification": _encode_classification,
    "preference": _encode_preference,
    "feedback": _encode_feedback,
    "prompt": _encode_prompt,
}

TEXTS: dict[str, Callable[[dict[str, Any], Any], str]] = {
    "text": _text_text,
    "completion": _completion_text,
    "alpaca": _alpaca_text,
    "chat": _chat_text,
    "classification": _classification_text,
    "preference": _preference_text,
    "feedback": _feedback_text,
    "prompt": _prompt_text,
}
