import json
import struct

import numpy as np
import pytest

from fedge import wire
from fedge.wire import (
    AdapterUpdate, Assignment, BackbonePart, BackboneRequest, BackboneSpec, DecodeError, DeviceProfile, GlobalState, Heartbeat, Hello, Limits,
    LoraSpec, Receipt, Reject, SchemaError, TaskSpec, TooLargeError, decode_message, encode_message,
)
from fedge.wire.codec import MAGIC
from fedge.wire.schema import to_json

PROFILE = DeviceProfile("jetson-orin-nano-8gb", "catalogue", "jetson", 8 << 30, 7 << 30, 6, is_jetson=True, unified_memory=True, gflops=1280.0)
TENSORS = {"layers.3.q_proj.lora_A.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7}

MESSAGES = [
    Hello("a1", PROFILE, 120, {"animal": 3, "7": 5}),
    Assignment("run", 2, "a1", BackboneSpec("smollm2", "ab" * 32, "nf4", 168_000_000, "https://models.lan/pkg/"), LoraSpec(("q_proj", "v_proj"), (26, 27, 28, 29), (4, 4, 8, 8), 2.0), TaskSpec("classify", ("positive", "negative"), "Review: {text}\nSentiment:", 64), 10, 16, 2e-3, 1.7e9, 7, prepare_only=True),
    AdapterUpdate("run", 2, "a1", 120, {"loss": 0.5}, TENSORS),
    GlobalState("run", 2, "a1", False, {"accuracy": 0.8}, TENSORS),
    GlobalState("run", 5, "", True, {}, TENSORS, more_runs=True),
    Reject("a1", "wrong_round", "late", 2, "abc"),
    Receipt("a1", 2, "ab" * 16),
    Heartbeat("a1", "training", 1.7e9, 4),
    BackboneRequest("a1", "ab" * 32, 40, 16),
    BackbonePart("ab" * 32, 41, bytes(range(256)) * 3),
]


def _encode_raw(header: dict, body: bytes = b"", version: int = wire.PROTOCOL_VERSION) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">4sBI", MAGIC, version, len(raw)) + raw + body


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    decoded = decode_message(encode_message(message))
    assert type(decoded) is type(message)
    for name in message.__dataclass_fields__:
        if name == "tensors":
            assert decoded.tensors.keys() == message.tensors.keys()
            for key, value in message.tensors.items():
                np.testing.assert_allclose(decoded.tensors[key], value, rtol=1e-3)
        else:
            assert getattr(decoded, name) == getattr(message, name)


def test_tensors_travel_as_fp16_by_default_and_fp32_on_request():
    update = MESSAGES[2]
    assert decode_message(encode_message(update)).tensors["layers.3.q_proj.lora_A.weight"].dtype == np.float16
    exact = decode_message(encode_message(update, tensor_dtype="float32"))
    np.testing.assert_array_equal(exact.tensors["layers.3.q_proj.lora_A.weight"], TENSORS["layers.3.q_proj.lora_A.weight"])
    assert len(encode_message(update)) < len(encode_message(update, tensor_dtype="float32"))


def test_public_api_is_pinned():
    assert set(wire.__all__) == {
        "MAX_GALORE_SCALE", "MAX_PROXIMAL_MU", "PREPARED_ROUNDS", "PROTOCOL_VERSION", "AdapterUpdate", "Assignment", "BackbonePart", "BackboneRequest", "BackboneSpec", "ChunkError", "DecodeError", "DeviceProfile", "Evaluation",
        "ForgedError", "GlobalState", "Heartbeat", "Hello", "Limits", "LoraSpec", "Message", "ProtocolError", "Reassembler", "Receipt", "Reject",
        "ReplayError", "SchemaError", "Signer", "TaskSpec", "TooLargeError", "Verifier", "decode_message", "encode_message", "split_frames",
    }


@pytest.mark.parametrize(
    "payload, error, text",
    [
        (b"GARBAGE-NOT-FEDGE", DecodeError, "bad magic"),
        (b"FE", DecodeError, "shorter"),
        (struct.pack(">4sBI", MAGIC, wire.PROTOCOL_VERSION, 5) + b"{nope", DecodeError, "not JSON"),
        (struct.pack(">4sBI", MAGIC, wire.PROTOCOL_VERSION, 500) + b"{}", DecodeError, "runs past"),
        (_encode_raw({"type": "teleport", "fields": {}}), SchemaError, "unknown message type"),
        (_encode_raw({"type": "heartbeat", "fields": {"agent_id": "a", "state": "x", "sent_unix": 1.0}}, version=9), SchemaError, "version 9"),
        (_encode_raw({"type": "heartbeat", "fields": {"agent_id": "a", "state": "x"}}), SchemaError, "sent_unix: missing"),
        (_encode_raw({"type": "heartbeat", "fields": {"agent_id": "a", "state": "x", "sent_unix": 1.0, "evil": 1}}), SchemaError, "unknown fields"),
        (_encode_raw({"type": "heartbeat", "fields": {"agent_id": 5, "state": "x", "sent_unix": 1.0}}), SchemaError, "agent_id: expected a string"),
        (_encode_raw({"type": "heartbeat", "fields": {"agent_id": "a", "state": "x", "sent_unix": 1.0}}, b"xx"), SchemaError, "carries no body"),
        (_encode_raw({"type": "update", "fields": {"run_id": "r", "round": True, "agent_id": "a", "num_examples": 1, "metrics": {}}}), SchemaError, "round: expected an integer"),
        (_encode_raw({"type": "update", "fields": {"run_id": "r", "round": 1, "agent_id": "a", "num_examples": 1, "metrics": {}}}, b"\x01\x02broken"), DecodeError, "safetensors"),
        (_encode_raw({"type": "update", "fields": []}), SchemaError, "expected an object"),
        (_encode_raw({"type": "backbone_part", "fields": {"digest": "d", "index": 0, "data": "AAAA"}}), SchemaError, "unknown fields"),
        (_encode_raw({"type": "backbone_request", "fields": {"agent_id": "a", "digest": "d", "first": "0", "count": 1}}), SchemaError, "first: expected an integer"),
        (_encode_raw({"type": "hello", "fields": {"agent_id": "a", "profile": to_json(PROFILE), "num_examples": 1, "label_counts": {"animal": "many"}}}), SchemaError, r"label_counts\.animal: expected an integer"),
        (_encode_raw({"type": "assignment", "fields": {**to_json(MESSAGES[1]), "task": {"kind": "classify", "labels": "animal"}}}), SchemaError, "task.labels: expected a list"),
        (_encode_raw({"type": "assignment", "fields": {**to_json(MESSAGES[1]), "task": {"kind": "classify", "labels": ["a"], "exec": "import os"}}}), SchemaError, r"task: unknown fields \['exec'\]"),
        (_encode_raw({"type": "assignment", "fields": {**to_json(MESSAGES[1]), "task": {"kind": "instruct", "eval_samples": 1e9}}}), SchemaError, "task.eval_samples: expected an integer"),
        (_encode_raw({"type": "assignment", "fields": {**to_json(MESSAGES[1]), "task": {"kind": "instruct", "metric": ["bleu"]}}}), SchemaError, "task.metric: expected a string"),
        (_encode_raw({"type": "assignment", "fields": {**to_json(MESSAGES[1]), "prefix_cache_bytes": "all"}}), SchemaError, "prefix_cache_bytes: expected an integer"),
        (_encode_raw({"type": "assignment", "fields": {**to_json(MESSAGES[1]), "prepare_only": 1}}), SchemaError, "prepare_only: expected a boolean"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(payload, error, text):
    with pytest.raises(error, match=text):
        decode_message(payload)


def test_integer_tensors_are_refused():
    from safetensors.numpy import save

    header = {"type": "update", "fields": {"run_id": "r", "round": 1, "agent_id": "a", "num_examples": 1, "metrics": {}}}
    with pytest.raises(SchemaError, match="dtype int64"):
        decode_message(_encode_raw(header, save({"x": np.ones(3, dtype=np.int64)})))


def test_size_limits_apply_before_parsing():
    update = MESSAGES[2]
    data = encode_message(update)
    with pytest.raises(TooLargeError):
        decode_message(data, Limits(max_message_bytes=len(data) - 1))
    with pytest.raises(TooLargeError, match="header"):
        decode_message(data, Limits(max_header_bytes=10))
    with pytest.raises(TooLargeError, match="tensors exceed"):
        decode_message(data, Limits(max_tensors=0))


def test_work_on_an_assignment_stops_in_time_to_send_its_result():
    assignment = next(message for message in MESSAGES if isinstance(message, Assignment))  # deadline 1.7e9
    assert assignment.work_until(1.7e9 - 1000) == pytest.approx(1.7e9 - 50)  # 5% of the time left
    assert assignment.work_until(1.7e9 - 10) == pytest.approx(1.7e9 - 2)  # at least 2 s
