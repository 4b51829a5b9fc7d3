"""Load a run config from YAML plus `--set` overrides, with errors that name the field."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from finetune.config.schema import RunConfig
from finetune.errors import ConfigError

_SCIENTIFIC = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply `key.path=value` overrides and validate it.

    Raises:
        ConfigError: the file is missing or not valid YAML, an override is malformed, or
            a value does not fit the schema. Every message names the file line or field path.
    """
    raw = read_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping, turning syntax errors into `file:line:column` messages."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); save the "
            "file as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {data!r}")
    return data


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one dotted `section.field=value` override in place; the value is parsed as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else text
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML: {err}") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {override!r}: {prefix} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def validate_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw mapping against the schema, collecting every error."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        messages = [format_error(e) for e in err.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(messages), messages) from None


def format_error(error: dict[str, Any]) -> str:
    """One pydantic error as `path: what is wrong; what is accepted`."""
    path, model, tag = _resolve_location(error["loc"])
    kind = error["type"]
    where = path or "(top level)"
    context = f" (type {tag!r})" if tag else ""
    if kind == "extra_forbidden":
        field = str(error["loc"][-1])
        accepted = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(field, accepted, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(accepted)}"
        return f"{where}: unknown field{context}; {hint}"
    if kind == "missing":
        return f"{where}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and message.startswith(f"{where}."):
        return message  # a section validator that already names the field
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = error.get("ctx", {})
        field = f"{where}.{ctx.get('discriminator', 'type').strip(chr(39))}"
        got = f"got {ctx['tag']!r}" if "tag" in ctx else "missing"
        return f"{field}: {got}; expected one of {ctx.get('expected_tags')}"
    if kind == "literal_error" or kind.endswith("_type"):
        return f"{where}: {message}; got {error.get('input')!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where}: {message}; got {error.get('input')!r}"
    if kind.endswith("_parsing") or kind.startswith("too_"):
        return f"{where}: {message}; got {error.get('input')!r}"
    return f"{where}: {message}"


def _resolve_location(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None, str | None]:
    """Walk the schema along a pydantic error location.

    Returns the user-facing dotted path (discriminator tags dropped, list indices as
    `[i]`), the section model holding the last field, and the union tag crossed, if any.
    """
    path = ""
    model: type[BaseModel] | None = RunConfig
    annotation: Any = RunConfig
    tag = None
    for item in loc:
        member = _union_member(annotation, item)
        if isinstance(item, int):
            path += f"[{item}]"
            annotation = _element_type(annotation)
            model = _as_model(annotation)
        elif member is not None:
            tag, annotation, model = str(item), member, member
        elif model is not None and item in model.model_fields:
            path = f"{path}.{item}" if path else item
            annotation = model.model_fields[item].annotation
            model = _as_model(annotation) or model
        elif isinstance(item, str) and not item.startswith("function-"):
            # An unknown key or a dict key: keep `model` as the section that holds it.
            path = f"{path}.{item}" if path else item
    return path, model, tag


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _union_args(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _union_args(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return ()


def _union_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            field = arg.model_fields.get("type")
            if field is not None and field.default == tag:
                return arg
    return None


def _element_type(annotation: Any) -> Any:
    for candidate in (annotation, *_union_args(annotation)):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, every default written out."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
