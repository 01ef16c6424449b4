"""Message bytes: ``FEDG`` | version (u8) | header length (u32, big-endian) | JSON header | safetensors body.

The header is ``{"type": ..., "fields": {...}}`` validated against the message's dataclass; tensors travel as a
safetensors body (fp16 by default), a ``data`` field as the raw body. No pickle anywhere.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from fedge.wire.errors import DecodeError, SchemaError, TooLargeError
from fedge.wire.messages import MESSAGE_TYPES, PROTOCOL_VERSION, TYPE_NAMES, Message
from fedge.wire.schema import from_json, to_json

MAGIC = b"FEDG"
_PREFIX = struct.Struct(">4sBI")
WIRE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class Limits:
    """Size limits applied before anything is parsed."""

    max_header_bytes: int = 64 * 1024
    max_message_bytes: int = 256 * 1024 * 1024
    max_tensors: int = 4096
    max_depth: int = 16  # JSON nesting of a header (real messages reach 4)


def encode_message(message: Message, tensor_dtype: str = "float16") -> bytes:
    """Serialise a message; tensors are cast to ``tensor_dtype`` (``float16`` or ``float32``)."""
    kind = TYPE_NAMES.get(type(message))
    if kind is None:
        raise TypeError(f"not a fedge message: {type(message).__name__}")
    header = json.dumps({"type": kind, "fields": to_json(message)}, separators=(",", ":")).encode()
    body = getattr(message, "data", b"")
    tensors = getattr(message, "tensors", None)
    if tensors:
        cast = WIRE_DTYPES[tensor_dtype]
        body = save_tensors({name: np.ascontiguousarray(value, dtype=cast) for name, value in tensors.items()})
    return _PREFIX.pack(MAGIC, PROTOCOL_VERSION, len(header)) + header + body


def decode_message(data: bytes, limits: Limits = Limits()) -> Message:
    """Parse and validate message bytes; raises a ``ProtocolError`` subclass naming what is wrong."""
    if len(data) > limits.max_message_bytes:
        raise TooLargeError(f"message of {len(data)} bytes exceeds the {limits.max_message_bytes}-byte limit")
    if len(data) < _PREFIX.size:
        raise DecodeError("message shorter than its prefix")
    magic, version, header_length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not a fedge message (bad magic)")
    if version != PROTOCOL_VERSION:
        raise SchemaError(f"protocol version {version} not supported (this side speaks {PROTOCOL_VERSION})")
    if header_length > limits.max_header_bytes:
        raise TooLargeError(f"header of {header_length} bytes exceeds the {limits.max_header_bytes}-byte limit")
    header_end = _PREFIX.size + header_length
    if header_end > len(data):
        raise DecodeError("header runs past the end of the message")
    raw_header = bytes(data[_PREFIX.size : header_end])
    depth = json_depth(raw_header)
    if depth > limits.max_depth:
        raise TooLargeError(f"header nests {depth} deep (limit {limits.max_depth})")
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise DecodeError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict) or set(header) != {"type", "fields"}:
        raise SchemaError("header must be an object with exactly 'type' and 'fields'")
    cls = MESSAGE_TYPES.get(header["type"]) if isinstance(header["type"], str) else None
    if cls is None:
        raise SchemaError(f"unknown message type {header['type']!r}")
    body = data[header_end:]
    if "tensors" in cls.__dataclass_fields__:
        return from_json(cls, header["fields"], body={"tensors": _decode_tensors(body, limits)})
    if "data" in cls.__dataclass_fields__:
        return from_json(cls, header["fields"], body={"data": bytes(body)})
    if body:
        raise SchemaError(f"a {header['type']} message carries no body")
    return from_json(cls, header["fields"])


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, counted without parsing it (so a hostile header
    cannot exhaust the parser's recursion); brackets inside strings do not count."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, delete=_NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)).max())


_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


def _decode_tensors(body: bytes, limits: Limits) -> dict[str, np.ndarray]:
    if not body:
        return {}
    try:
        tensors = load_tensors(body)
    except Exception as error:  # safetensors raises its own SafetensorError, and others on truncated input
        raise DecodeError(f"tensor body is not valid safetensors: {error}") from None
    if len(tensors) > limits.max_tensors:
        raise TooLargeError(f"{len(tensors)} tensors exceed the limit of {limits.max_tensors}")
    for name, value in tensors.items():
        if value.dtype not in (np.float16, np.float32):
            raise SchemaError(f"tensor {name}: dtype {value.dtype} not allowed (float16 or float32)")
    return tensors
