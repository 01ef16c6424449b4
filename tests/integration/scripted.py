"""A hand-driven enrolled agent that can send anything, good or bad, signed with its own key."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np

from fedge.trust.downlink import DownlinkCodec
from fedge.heartbeat import start_heartbeat
from fedge.transport import BrokerConfig, MqttTransport
from fedge.trust.enrolment import Credentials
from fedge.wire import AdapterUpdate, Assignment, GlobalState, Heartbeat, Hello, Receipt, Reject, topics
from fedge.profiles import load_catalogue_profile


class ScriptedAgent:
    def __init__(self, url: str, credentials: Credentials, examples: int = 20, heartbeat_s: float | None = None):
        """With ``heartbeat_s`` it sends heartbeats ("idle", its latest round) like a real agent; without, it is
        silent between the messages it is told to send."""
        self.agent_id = credentials.identity
        self.examples = examples
        self.codec = DownlinkCodec(credentials)
        login = replace(BrokerConfig.from_url(url), username=credentials.broker_username, password=credentials.broker_password)
        self.transport = MqttTransport(login, f"scripted-{self.agent_id}", codec=self.codec)
        self.transport.subscribe(topics.downlink(self.agent_id))
        self.transport.connect()
        self.states: dict[int, GlobalState] = {}
        self.round = 0
        self._stopped = threading.Event()
        if heartbeat_s:
            start_heartbeat(self.transport, self.agent_id, heartbeat_s, self._stopped, lambda: ("idle", self.round, 0, 0))

    def hello(self) -> None:
        self.send(Hello(self.agent_id, load_catalogue_profile("cpu-8gb"), self.examples))

    def send(self, message) -> None:
        self.transport.publish(topics.uplink(self.agent_id), message, tensor_dtype="float32")

    def _next(self, want, timeout_s: float = 30.0):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            received = self.transport.receive(timeout_s=0.5)
            if received is None or received.message is None:
                continue
            if isinstance(received.message, Assignment):
                self.codec.run = received.message.run_id
                self.round = received.message.round
                if received.message.prepare_only:  # nothing to load: ready at once
                    self.send(Heartbeat(self.agent_id, "ready", time.time(), self.round))
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

    def expect_receipt(self, update: AdapterUpdate) -> Receipt:
        return self._next(lambda m: isinstance(m, Receipt) and m.ref == update.message_id)

    def update(self, round_number: int, **changes) -> AdapterUpdate:
        state = self.state_for(round_number)
        tensors = {key: value.astype(np.float32) + 0.01 for key, value in state.tensors.items()}
        fields = {"run_id": state.run_id, "round": state.round, "agent_id": self.agent_id, "num_examples": self.examples, "metrics": {"loss": 1.0}, "tensors": tensors}
        return AdapterUpdate(**{**fields, **changes})

    def close(self) -> None:
        self._stopped.set()
        self.transport.close()
