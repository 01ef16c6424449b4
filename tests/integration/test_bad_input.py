"""Bad input over a real broker: each is refused with a reason, and the run goes on with the valid updates."""

import json
import struct
import threading
import time

import numpy as np
import pytest

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from fedge.task.data import write_jsonl
from fedge.task.wordnet import Example
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import AdapterUpdate, BackbonePart, BackboneRequest, GlobalState, Hello, Reject, topics
from fedge.wire.codec import MAGIC
from profiles import load_catalogue_profile

pytestmark = pytest.mark.broker


class ScriptedAgent:
    """A hand-driven agent that can send anything, good or bad."""

    def __init__(self, url: str, agent_id: str):
        self.agent_id = agent_id
        self.transport = MqttTransport(BrokerConfig.from_url(url), f"scripted-{agent_id}")
        self.transport.subscribe(topics.downlink(agent_id))
        self.transport.connect()
        self.states: dict[int, GlobalState] = {}

    def hello(self) -> None:
        self.send(Hello(self.agent_id, load_catalogue_profile("cpu-8gb"), 20))

    def send(self, message) -> None:
        self.transport.publish(topics.uplink(self.agent_id), message, tensor_dtype="float32")

    def send_raw(self, payload: bytes) -> None:
        self.transport.publish_frames(topics.uplink(self.agent_id), [payload])

    def _next(self, want, timeout_s: float = 30.0):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            received = self.transport.receive(timeout_s=0.5)
            if received is None or received.message is None:
                continue
            if isinstance(received.message, GlobalState):
                self.states[received.message.round] = received.message
            if want(received.message):
                return received.message
        raise AssertionError(f"{self.agent_id}: nothing matching arrived in {timeout_s} s")

    def state_for(self, round_number: int) -> GlobalState:
        return self.states.get(round_number) or self._next(lambda m: isinstance(m, GlobalState) and m.round == round_number)

    def expect_reject(self, reason: str) -> Reject:
        reject = self._next(lambda m: isinstance(m, Reject))
        assert reject.reason == reason, reject
        return reject

    def update(self, round_number: int, **changes) -> AdapterUpdate:
        state = self.state_for(round_number)
        tensors = {key: value.astype(np.float32) + 0.01 for key, value in state.tensors.items()}
        fields = {"run_id": "bad", "round": state.round, "agent_id": self.agent_id, "num_examples": 20, "metrics": {"loss": 1.0}, "tensors": tensors}
        return AdapterUpdate(**{**fields, **changes})


def _raw(header: dict, version: int = 1) -> bytes:
    data = json.dumps(header).encode()
    return struct.pack(">4sBI", MAGIC, version, len(data)) + data


def test_every_kind_of_bad_input_is_rejected_and_the_run_goes_on(any_broker, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [Example("food of time", i % 8) for i in range(8)])
    config = CoordinatorConfig.from_dict({
        "run_id": "bad", "run_dir": str(tmp_path / "run"), "broker": any_broker.url, "backbone": str(tiny_backbone),
        "eval_data": str(tmp_path / "test.jsonl"), "rounds": 2, "min_clients": 1, "expected_clients": 2,
        "round_deadline_s": 8, "registration_timeout_s": 30, "max_message_mb": 0.05, "planner": {"max_depth": 1, "ranks": [2]}, "devices": {"cpu": {"rank": 2, "depth": 1}},
    })
    failures = []
    coordinator = Coordinator(config)
    thread = threading.Thread(target=lambda: failures.append(None) if coordinator.run() else None, daemon=True)
    thread.start()
    good, slow = ScriptedAgent(any_broker.url, "good"), ScriptedAgent(any_broker.url, "slow")
    stranger = ScriptedAgent(any_broker.url, "stranger")
    good.hello()
    slow.hello()
    good.state_for(1)
    slow.state_for(1)

    good.send_raw(b"{this is not a fedge message")
    good.expect_reject("malformed")
    good.send_raw(_raw({"type": "teleport", "fields": {}}))
    good.expect_reject("schema")
    good.send_raw(_raw({"type": "heartbeat", "fields": {}}, version=7))
    good.expect_reject("schema")
    valid = good.update(1)
    key = next(iter(valid.tensors))
    good.send(good.update(1, tensors={"not.a.lora.key": np.zeros(3, np.float32)}))
    good.expect_reject("bad_keys")
    good.send(good.update(1, tensors={**valid.tensors, key: valid.tensors[key].T.copy()}))
    good.expect_reject("bad_shape")
    good.send(good.update(1, tensors={**valid.tensors, key: np.full_like(valid.tensors[key], np.nan)}))
    good.expect_reject("not_finite")
    good.send(good.update(1, tensors={**valid.tensors, "huge": np.zeros(100_000, np.float32)}))
    good.expect_reject("too_large")
    good.send(good.update(1, round=5))
    good.expect_reject("wrong_round")
    good.send(good.update(1, agent_id="slow"))
    good.expect_reject("agent_mismatch")
    stranger.send(AdapterUpdate("bad", 1, "stranger", 5, {}, valid.tensors))
    stranger.expect_reject("unknown_agent")
    good.send(valid)
    good.send(valid)
    good.expect_reject("duplicate")
    # backbone traffic: a part sent the wrong way is refused; garbage or a stranger's request to the backbone server
    # changes nothing (the stranger was never assigned a package) and the run goes on
    good.send(BackbonePart("ab" * 32, 0, b"x" * 100))
    good.expect_reject("unexpected_type")
    stranger.transport.publish(topics.fetch("stranger"), BackboneRequest("stranger", "ab" * 32, -1, 0))
    stranger.transport.publish_raw(topics.fetch("stranger"), b"\x00" * 5000)
    stranger.transport.publish(topics.fetch("stranger"), BackboneRequest("good", "ab" * 32, 0, 10**9))

    # slow misses round 1's deadline; its round-1 update then arrives during round 2
    slow_round1 = slow.update(1)
    slow.state_for(2)
    slow.send(slow_round1)
    slow.expect_reject("wrong_round")
    good.send(good.update(2))
    slow.send(slow.update(2))
    thread.join(timeout=60)
    assert not thread.is_alive() and failures == [None], "the coordinator must finish the run"

    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["contributors"] == ["good"]
    assert rounds[2]["contributors"] == ["good", "slow"]
    for agent in (good, slow, stranger):
        agent.transport.close()
