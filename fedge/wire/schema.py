"""Build message dataclasses from JSON, checking every field against its type hint.

Unknown fields, missing required fields and wrong types are all refused with the field's path in the error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any

from fedge.wire.errors import SchemaError


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _convert(value, inner[0], path)
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{path}: expected a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{path}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{path}: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{path}: expected a string")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list")
        return tuple(_convert(item, args[0], f"{path}[{index}]") for index, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object")
        return {key: _convert(item, args[1], f"{path}.{key}") for key, item in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, path)
    raise SchemaError(f"{path}: unsupported type {hint!r}")


BODY_FIELDS = ("tensors", "data")  # filled from the message body, never from the JSON header


def from_json(cls: type, data: Any, path: str = "", body: dict[str, Any] | None = None) -> Any:
    """An instance of dataclass ``cls`` from a JSON object; ``body`` fills its body field (``tensors`` or ``data``)."""
    if not isinstance(data, dict):
        raise SchemaError(f"{path or cls.__name__}: expected an object")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in BODY_FIELDS}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(f"{path or cls.__name__}: unknown fields {unknown}")
    values: dict[str, Any] = dict(body or {})
    for name, spec in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{where}: missing")
            continue
        values[name] = _convert(data[name], hints[name], where)
    return cls(**values)


def to_json(message: Any) -> dict[str, Any]:
    """The JSON-able fields of a message dataclass, without its body."""
    return {
        f.name: dataclasses.asdict(value) if dataclasses.is_dataclass(value := getattr(message, f.name)) else value
        for f in dataclasses.fields(message)
        if f.name not in BODY_FIELDS
    }
