"""What every configuration schema shares: strict sections, and pydantic's errors in the operator's words.

Each file fedge reads (coordinator, trial, fleet, field-trial arms) and the agent's options are a pydantic model
built on ``Section``: values typed (no string for a number, no number for a string), ranged, unknown keys refused.
``validated`` answers every problem at once, each one line with its key path (``planner.max_depth``,
``strategies[2].proximal_mu``), what was expected, what was given and, for an unknown key, the nearest known one.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

Model = TypeVar("Model", bound=BaseModel)

_TYPE_WORDS = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer", "float_type": "a number",
    "float_parsing": "a number", "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping", "finite_number": "a finite number",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


class ConfigError(ValueError):
    """One or more configuration values are wrong; the message lists them all, one per line."""


class Section(BaseModel):
    """A strict, closed mapping: the base of every configuration schema."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def validated(model: type[Model], raw: object, strict: bool = True) -> tuple[Model | None, list[str]]:
    """``raw`` as ``model``, or None and every problem. ``strict=False`` reads numbers from strings (command-line
    flags)."""
    try:
        return model.model_validate(raw, strict=strict), []
    except ValidationError as error:
        return None, describe(model, error)


def known_part(model: type[Model], raw: object) -> Model | None:
    """``raw`` as ``model`` once its unknown keys are dropped, or None: what the cross-key checks can still use
    while ``validated`` reports the rest."""
    if not isinstance(raw, dict):
        return None
    return validated(model, {key: value for key, value in raw.items() if key in model.model_fields})[0]


def load_yaml(path: str | Path, what: str) -> dict:
    """A YAML file's top-level mapping; ``ConfigError`` (never a traceback) for a missing file or bad YAML."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level of the {what}")
    return raw


def describe(model: type[BaseModel], error: ValidationError) -> list[str]:
    """One line per key; what a union's alternatives each expected at one key is said once."""
    by_path: dict[str, list[tuple[dict, list[str], Any]]] = {}
    for item in error.errors(include_url=False):
        path, known, field = _walk(model, item["loc"])
        by_path.setdefault(path.replace(".[", "["), []).append((item, known, field))
    return [f"{key}: {_problems(found)}" for key, found in by_path.items()]


def _problems(found: list[tuple[dict, list[str], Any]]) -> str:
    item, _, field = found[0]
    if len(found) > 1 and all(each["type"] in _TYPE_WORDS for each, _, _ in found):
        words = " or ".join(dict.fromkeys(_TYPE_WORDS[each["type"]] for each, _, _ in found))
        return f"expected {words} (got {_shown(item['input'])})" + _explained(field)
    return " or ".join(dict.fromkeys(_problem(*each) for each in found))


def _problem(item: dict, known: list[str], field: Any) -> str:
    kind, context = item["type"], item.get("ctx") or {}
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(item["loc"][-1]), known, n=1, cutoff=0.6)
        return "unknown key" + (f"; did you mean {close[0]}?" if close else f" (known: {', '.join(known)})" if len(known) <= 12 else "")
    if kind == "missing":
        return "required" + _explained(field)
    if kind == "literal_error":
        choices = context.get("expected", "").replace("'", "").replace(" or ", ", ")
        return f"one of {choices} (got {_shown(item['input'])})"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {context[_BOUND_KEYS[kind]]:g} (got {_shown(item['input'])})" + _explained(field)
    if kind == "too_short":
        return f"at least {context['min_length']} item{'s' * (context['min_length'] != 1)} (got {context['actual_length']})" + _explained(field)
    if kind == "string_pattern_mismatch":
        return f"not allowed (got {_shown(item['input'])})" + _explained(field)
    if kind == "string_too_short":
        return "must not be empty" + _explained(field)
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]} (got {_shown(item['input'])})" + _explained(field)
    message = item["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _explained(field: Any) -> str:
    description = getattr(field, "description", None)
    return f": {description}" if description else ""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _walk(model: type[BaseModel], loc: tuple) -> tuple[str, list[str], Any]:
    """The key path of ``loc`` (pydantic's union tags dropped), the keys known where it ends, and its field."""
    parts: list[str] = []
    current: Any = model
    known: list[str] = []
    field = None
    for step in loc:
        current = _unwrapped(current)
        if _is_union(current):
            current = _union_member(current, step)
            continue
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            known = list(current.model_fields)
            field = current.model_fields.get(str(step))
            parts.append(str(step))
            current = field.annotation if field else None
        elif origin in (list, tuple) and isinstance(step, int):
            parts.append(f"[{step}]")
            current = (typing.get_args(current) or (None,))[0]
        elif origin is dict:
            parts.append(str(step))
            current = typing.get_args(current)[1]
        elif isinstance(step, str) and not step.startswith(("literal[", "function-")):
            parts.append(step)
    return ".".join(parts), known, field


def _unwrapped(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` and without ``None`` as an alternative (pydantic tags neither)."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif _is_union(annotation) and type(None) in typing.get_args(annotation):
            members = [member for member in typing.get_args(annotation) if member is not type(None)]
            if len(members) > 1:
                return typing.Union[tuple(members)]
            annotation = members[0]
        else:
            return annotation


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union


def _union_member(union: Any, tag: object) -> Any:
    for member in typing.get_args(union):
        name = getattr(_unwrapped(member), "__name__", None) or str(member)
        if tag in (name, str(member), getattr(member, "__name__", None)):
            return member
    return None
