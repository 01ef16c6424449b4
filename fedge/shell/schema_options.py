"""Command-line flags made from a configuration schema: the schema's fields give each flag its help and default, and
its validation checks the values, every problem named by its flag."""

from __future__ import annotations

import argparse

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fedge.config_schema import ConfigError, Model, validated


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of ``model`` (``--max-line-kb`` for ``max_line_kb``); booleans are switches."""
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=field.description)
            continue
        default = field.default
        shown = "required" if default is PydanticUndefined else None if default is None else f"default {default}"
        parser.add_argument(flag, metavar=name.upper(), default=argparse.SUPPRESS, help=f"{field.description}" + (f" ({shown})" if shown else ""))


def options_from(args: argparse.Namespace, model: type[Model]) -> Model:
    """``model`` from the parsed flags; ``ConfigError`` lists every wrong or missing one."""
    options, errors = validated(model, {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}, strict=False)
    if options is None:
        raise ConfigError("invalid options:\n  " + "\n  ".join(_flagged(line) for line in errors))
    return options


def _flagged(problem: str) -> str:
    key, _, text = problem.partition(": ")
    return f"--{key.replace('_', '-')}: {text}"
