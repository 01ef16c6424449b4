"""Every configuration schema, as JSON Schema for editors and as the configuration reference in the docs.

``fedge schema KIND`` prints one JSON Schema; ``fedge schema --write ROOT`` rewrites ``schemas/*.schema.json``,
``docs/reference/configuration.md`` and the command-line reference from the models and the parser, so none is
edited by hand (a test checks they are current).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel

from fedge.coordinator.config_schema import CoordinatorFile
from fedge.coordinator.fleet import FleetFile
from fedge.edge_agent.options import AgentOptions
from fedge.shell.cli_reference import CLI_REFERENCE, cli_reference
from fedge.shell.trial.config import TrialFile
from fedge.shell.trial.field import ArmsFile

SCHEMAS: dict[str, type[BaseModel]] = {"coordinator": CoordinatorFile, "trial": TrialFile, "arms": ArmsFile, "fleet": FleetFile, "agent": AgentOptions}
USED_BY = {
    "coordinator": "`fedge coordinator --config FILE`", "trial": "`fedge trial FILE`", "arms": "`fedge coordinator --config C --arms FILE`",
    "fleet": "`fedge plan FILE`", "agent": "`fedge agent` (each key is a flag: `max_line_kb` is `--max-line-kb`)",
}
SCHEMA_DIR = Path("schemas")
REFERENCE = Path("docs/reference/configuration.md")
_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def json_schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of one kind of file."""
    schema = SCHEMAS[kind].model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def write_all(root: Path, parser: argparse.ArgumentParser) -> list[Path]:
    """Write every JSON Schema and the references (the command line's from ``parser``) under ``root``; returns what
    was written."""
    written = []
    for kind in SCHEMAS:
        path = root / SCHEMA_DIR / f"{kind}.schema.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    (root / REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    (root / REFERENCE).write_text(reference())
    (root / CLI_REFERENCE).write_text(cli_reference(parser))
    return [*written, root / REFERENCE, root / CLI_REFERENCE]


def reference() -> str:
    """The configuration reference in Markdown: one table per file and per section."""
    lines = ["# Configuration reference", "",
             "Written by `fedge schema --write` from the schemas fedge checks every file with; do not edit by hand.",
             "Editors that read JSON Schema (VS Code's YAML extension, for one) check a file as you type when its first line is",
             "`# yaml-language-server: $schema=<path to>/schemas/KIND.schema.json`.", ""]
    for kind in SCHEMAS:
        schema = json_schema(kind)
        lines += [f"## {kind.capitalize()}", "", f"{schema.get('description', '')} Used by {USED_BY[kind]}; JSON Schema: `schemas/{kind}.schema.json`.", ""]
        lines += _table(schema, schema.get("$defs", {}))
        for name, section in schema.get("$defs", {}).items():
            lines += [f"### {kind}: {name}", "", section.get("description", ""), ""] + _table(section, schema["$defs"])
    return "\n".join(lines).rstrip() + "\n"


def _table(schema: dict, defs: dict) -> list[str]:
    required = set(schema.get("required", ()))
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, spec in schema.get("properties", {}).items():
        default = "required" if key in required else f"`{json.dumps(spec.get('default'), ensure_ascii=False)}`" if "default" in spec else ""
        meaning = spec.get("description") or defs.get(_ref_name(spec) or "", {}).get("description", "")
        rows.append(f"| `{key}` | {_type(spec)} | {default} | {meaning.replace('|', '/')} |")
    return rows + [""]


def _type(spec: dict) -> str:
    if "$ref" in spec:
        return f"section {_ref_name(spec)} (below)"
    if "enum" in spec:
        return "one of " + ", ".join(f"`{value}`" for value in spec["enum"])
    if "anyOf" in spec:
        options = [option for option in spec["anyOf"] if option.get("type") != "null"]
        text = " or ".join(_type(option) for option in options)
        return text + (" or unset" if len(options) < len(spec["anyOf"]) else "") + _bounds(spec)
    kind = spec.get("type", "any")
    if kind == "array":
        text = f"list of {_type(spec.get('items', {}))}" + (f", at least {spec['minItems']}" if "minItems" in spec else "")
    elif kind == "object":
        text = f"mapping to {_type(spec['additionalProperties'])}" if isinstance(spec.get("additionalProperties"), dict) else "mapping"
    else:
        text = kind
    return text + _bounds(spec)


def _bounds(spec: dict) -> str:
    found = [f"{sign} {spec[key]:g}" for key, sign in _BOUNDS if key in spec]
    return f" ({', '.join(found)})" if found else ""


def _ref_name(spec: dict) -> str | None:
    return spec["$ref"].rsplit("/", 1)[-1] if "$ref" in spec else None
