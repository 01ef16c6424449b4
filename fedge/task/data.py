"""Local datasets on disk: JSON lines, checked line by line before anything heavy is imported.

A file holds one of two formats, the same on every line:

* labelled text, ``{"text": str, "label": str | int}``, for ``classify``;
* conversations, ``{"instruction": str, "input"?: str, "response": str}`` or
  ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``, for ``instruct``.

Other keys on a line are kept in ``extra`` for custom task kinds. Reading needs no task: an agent reads and checks
its file at start-up; the assigned task then checks that the format is the one it trains on
(``fedge.task.kinds``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 1 << 20  # the longest data line read by default (1 MiB: about 250,000 tokens of text)


@dataclass(frozen=True)
class Example:
    """One labelled example with its class index."""

    text: str
    label: int


@dataclass(frozen=True)
class Row:
    """One labelled line as written: the label is a label string or a class index."""

    text: str
    label: str | int
    line: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Dialogue:
    """One conversation line: (role, content) messages ending with the assistant's answer."""

    messages: tuple[tuple[str, str], ...]
    line: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


Record = Row | Dialogue


def read_rows(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> list[Record]:
    """Read a data file; a bad line is reported as ``FILE:LINE: reason``. A line longer than ``max_line_bytes`` is
    refused as soon as that many bytes are read: it is never held, parsed or tokenized whole."""
    records: list[Record] = []
    with Path(path).open("rb") as handle:
        for number, data in enumerate(iter(lambda: handle.readline(max_line_bytes + 1), b""), 1):
            if len(data) > max_line_bytes:
                raise ValueError(f"{path}:{number}: longer than {max_line_bytes} bytes (the bound on a data line; fedge agent --max-line-kb raises it)")
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 ({error.reason} at byte {error.start})") from None
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            try:
                record = _record(raw, number)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
            if records and type(record) is not type(records[0]):
                raise ValueError(f"{path}:{number}: a {_format(record)} line in a file of {_format(records[0])} lines")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no examples")
    return records


def _record(raw: Any, line: int) -> Record:
    if not isinstance(raw, dict):
        raise ValueError("expected an object")
    if "label" in raw or "text" in raw:
        return _row(raw, line)
    if "messages" in raw:
        return _chat(raw, line)
    if "instruction" in raw or "response" in raw:
        return _instruction(raw, line)
    raise ValueError("expected {text, label}, {instruction, input?, response} or {messages: [...]}")


def _row(raw: dict, line: int) -> Row:
    if "text" not in raw or "label" not in raw:
        raise ValueError("expected an object with 'text' and 'label'")
    text, label = raw["text"], raw["label"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("'text' must be a non-empty string")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError("'label' must be a label string or a class index")
    return Row(text, label, line, _extra(raw, ("text", "label")))


def _instruction(raw: dict, line: int) -> Dialogue:
    instruction, extra_input, response = raw.get("instruction"), raw.get("input", ""), raw.get("response")
    for key, value in (("instruction", instruction), ("response", response)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    if not isinstance(extra_input, str):
        raise ValueError("'input' must be a string")
    question = instruction + (f"\n\n{extra_input}" if extra_input.strip() else "")
    return Dialogue((("user", question), ("assistant", response)), line, _extra(raw, ("instruction", "input", "response")))


def _chat(raw: dict, line: int) -> Dialogue:
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{index}]: expected {{role: {' | '.join(ROLES)}, content: str}}")
        out.append((message["role"], message["content"]))
    if out[-1][0] != "assistant" or not out[-1][1].strip():
        raise ValueError("the last message must be the assistant's non-empty answer")
    return Dialogue(tuple(out), line, _extra(raw, ("messages",)))


def _extra(raw: dict, known: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in raw.items() if key not in known}


def _format(record: Record) -> str:
    return "labelled-text" if isinstance(record, Row) else "conversation"


def label_counts(records: list[Record]) -> dict[str, int]:
    """How often each label occurs, keyed as written (indices as decimal strings); empty for conversations."""
    counts: dict[str, int] = {}
    for record in records:
        if isinstance(record, Row):
            counts[str(record.label)] = counts.get(str(record.label), 0) + 1
    return counts


def write_jsonl(path: Path, examples: list[Example], labels: tuple[str, ...] | None = None) -> None:
    """Write examples, with their label strings when ``labels`` is given, else their class indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            label = labels[example.label] if labels is not None else example.label
            handle.write(json.dumps({"text": example.text, "label": label}) + "\n")


def write_dialogues(path: Path, dialogues: list[Dialogue]) -> None:
    """Write conversations in the ``messages`` format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for dialogue in dialogues:
            handle.write(json.dumps({"messages": [{"role": role, "content": content} for role, content in dialogue.messages]}) + "\n")
