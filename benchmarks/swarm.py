"""Simulated agents for load tests: many per process, each its own MQTT connection and enrolled identity.

A simulated agent logs in with its broker password and signs like a real agent (its own key, ``DownlinkCodec``).
It says hello with a catalogue profile, sends signed heartbeats on its heartbeat lane, answers a preparing
assignment with "ready" (as an agent that already holds the backbone does), and answers each global state after
``train_s`` seconds of pretend training with a valid update: the tensors it was sent, slightly changed, in the
shapes its plan gives. Refused, it disconnects; sent its final state, it reports an evaluation and disconnects.

All of a process's connections run on one thread: paho's external-loop callbacks register each socket with a
``selectors`` loop, which also fires the timers (heartbeats, pretend training). Each agent records when it
received each round's state and sent its update, which ``fleet_load`` turns into the server's overhead per round.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import selectors
import time
from collections import Counter
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fedge.trust.downlink import DownlinkCodec
from fedge.trust.enrolment import Credentials, device_credentials_path
from fedge.wire import AdapterUpdate, Assignment, Evaluation, GlobalState, Heartbeat, Hello, ProtocolError, Reassembler, Reject, split_frames, topics
from fedge.wire.chunks import DEFAULT_MAX_FRAME_BYTES
from fedge.profiles import catalogue_names, load_catalogue_profile

CONNECTS_PER_TICK = 50  # new connections opened per loop pass: a burst of thousands overflows the listen backlog


class Loop:
    """One thread's selector over every simulated agent's socket, with timers."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, object]] = []
        self._order = itertools.count()

    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = lambda c, userdata, sock: self.selector.register(sock, selectors.EVENT_READ, c)
        client.on_socket_close = lambda c, userdata, sock: self.selector.unregister(sock)
        client.on_socket_register_write = lambda c, userdata, sock: self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        client.on_socket_unregister_write = lambda c, userdata, sock: self.selector.modify(sock, selectors.EVENT_READ, c)

    def later(self, delay_s: float, action) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._order), action))

    def turn(self, timeout_s: float) -> None:
        """Serve ready sockets, then due timers."""
        wait = min(timeout_s, max(self._timers[0][0] - time.monotonic(), 0.0)) if self._timers else timeout_s
        for key, events in self.selector.select(wait):
            client = key.data
            if events & selectors.EVENT_READ:
                client.loop_read()
            if events & selectors.EVENT_WRITE and key.fileobj.fileno() >= 0:
                client.loop_write()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()


class SimulatedAgent:
    def __init__(self, identity: str, fleet_dir: Path, profile_name: str, examples: int, loop: Loop, train_s: float, heartbeat_s: float, host: str, port: int):
        credentials = Credentials.load(device_credentials_path(fleet_dir, identity))
        self.identity, self.examples, self.loop = identity, examples, loop
        self.profile = load_catalogue_profile(profile_name)
        self.train_s, self.heartbeat_s = train_s, heartbeat_s
        self.codec = DownlinkCodec(credentials)
        self.reassembler = Reassembler()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fedge-agent-{identity}", protocol=mqtt.MQTTv311, clean_session=False)
        self.client.username_pw_set(credentials.broker_username, credentials.broker_password)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        loop.attach(self.client)
        self.host, self.port = host, port
        self.state, self.round, self.done, self.connected = "idle", 0, False, False
        self.assignments: dict[int, Assignment] = {}
        self.state_received: dict[int, float] = {}  # round -> when its global state arrived
        self.update_sent: dict[int, float] = {}  # round -> when the update left
        self.rejects: Counter[str] = Counter()
        self.unreadable = 0

    def start(self) -> None:
        self.client.connect(self.host, self.port, keepalive=60)

    # --- paho callbacks (the loop's thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.rejects[f"connect: {reason_code}"] += 1
            self.done = True
            return
        self.connected = True
        client.subscribe(topics.downlink(self.identity), qos=1)
        self._hello()
        self.loop.later(random.uniform(0, self.heartbeat_s), self._beat)

    def _on_message(self, client, userdata, message) -> None:
        try:
            whole = self.reassembler.feed(message.payload, message.topic)
            if whole is not None:
                self._dispatch(self.codec.open(message.topic, whole))
        except ProtocolError:
            self.unreadable += 1

    # --- behaviour ---
    def _send(self, topic: str, message, qos: int = 1, stream: str = "main") -> None:
        for frame in split_frames(self.codec.seal(topic, message, "float16", stream), DEFAULT_MAX_FRAME_BYTES):
            self.client.publish(topic, frame, qos=qos)

    def _hello(self) -> None:
        self._send(topics.uplink(self.identity), Hello(self.identity, self.profile, self.examples))

    def _beat(self) -> None:
        if self.done:
            return
        self._send(topics.heartbeat(self.identity), Heartbeat(self.identity, self.state, time.time(), self.round), qos=0, stream="beat")
        self.loop.later(self.heartbeat_s, self._beat)

    def _dispatch(self, message) -> None:
        if isinstance(message, Assignment):
            self.assignments[message.round] = message
            self.codec.run = message.run_id
            self.round = message.round
            if message.prepare_only:
                self.state = "ready"
                self._send(topics.uplink(self.identity), Heartbeat(self.identity, "ready", time.time(), message.round))
        elif isinstance(message, GlobalState) and message.final:
            self._send(topics.uplink(self.identity), Evaluation(message.run_id, message.round, self.identity, 0.5, 1.0, self.examples))
            self.loop.later(1.0, self._leave)
        elif isinstance(message, GlobalState) and message.round in self.assignments and message.round not in self.state_received:
            self.state_received[message.round] = time.time()
            self.state = "training"
            self.loop.later(self.train_s, lambda: self._update(message))
        elif isinstance(message, Reject):
            self.rejects[message.reason] += 1
            if message.reason in ("unknown_agent", "label_counts_wanted"):
                self._hello()
            elif message.reason in ("infeasible", "bad_profile"):
                self._leave()

    def _update(self, state: GlobalState) -> None:
        tensors = {key: (value * 0.99).astype(np.float32) for key, value in state.tensors.items()}
        self._send(topics.uplink(self.identity), AdapterUpdate(state.run_id, state.round, self.identity, self.examples, {"loss": 1.0, "base_version": 0}, tensors))
        self.update_sent[state.round] = time.time()
        self.state = "idle"

    def _leave(self) -> None:
        self.done = True
        self.client.disconnect()

    def record(self) -> dict:
        return {"id": self.identity, "connected": self.connected, "state_received": self.state_received, "update_sent": self.update_sent, "rejects": dict(self.rejects), "unreadable": self.unreadable}


def fleet_profile(index: int) -> str:
    """The catalogue device of the index-th simulated agent: every catalogue entry in turn."""
    names = catalogue_names()
    return names[index % len(names)]


def run_swarm(identities: list[str], first_index: int, fleet_dir: str, host: str, port: int, train_s: float, heartbeat_s: float, out: str, stop_after_s: float) -> None:
    """(In its own process.) Run these agents until every one is done or ``stop_after_s`` passes; write their
    records to ``out`` as JSON."""
    loop = Loop()
    agents = [SimulatedAgent(identity, Path(fleet_dir), fleet_profile(first_index + offset), 100 + (first_index + offset) % 900, loop, train_s, heartbeat_s, host, port) for offset, identity in enumerate(identities)]
    waiting = list(reversed(agents))
    deadline = time.monotonic() + stop_after_s
    next_misc = 0.0
    while time.monotonic() < deadline and (waiting or not all(agent.done for agent in agents)):
        for _ in range(min(CONNECTS_PER_TICK, len(waiting))):
            waiting.pop().start()
        loop.turn(0.05 if waiting else 0.5)
        if time.monotonic() >= next_misc:  # keepalive pings and retries of unacknowledged messages
            for agent in agents:
                if not agent.done:
                    agent.client.loop_misc()
            next_misc = time.monotonic() + 1.0
    Path(out).write_text(json.dumps([agent.record() for agent in agents]))
