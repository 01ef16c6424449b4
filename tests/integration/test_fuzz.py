"""Thousands of malformed, forged, replayed and oversized messages of every kind, at a live coordinator and its
agents over Mosquitto, while a real run proceeds: nothing crashes, no state grows without bound, and the run ends
with exactly the global model the same seeded run reaches unattacked. The agents' frames are 1 KiB, so their updates
travel chunked among the attacker's never-finishing chunks on the same topics."""

from __future__ import annotations

import json
import random
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.fleet_status import MAX_REPORTED_STEPS
from fedge.coordinator.reports import RunDirectory
from fedge.coordinator.robust import RobustRules
from fedge.coordinator.server import Coordinator
from fedge.edge_agent.agent import EdgeAgent
from fedge.task.data import write_jsonl
from fedge.task.wordnet import WORDNET_TASK
from fedge.transport import BrokerConfig
from fedge.trust.keys import new_private_key
from fedge.wire import (
    PROTOCOL_VERSION, AdapterUpdate, Assignment, BackbonePart, BackboneRequest, BackboneSpec, Evaluation, GlobalState, Heartbeat, Hello,
    LoraSpec, Receipt, Reject, TaskSpec, encode_message, topics,
)
from fedge.wire.chunks import CHUNK_MAGIC
from fedge.wire.codec import MAGIC
from fedge.wire.envelope import SHARED_STREAM, Signer
from fedge.profiles import load_catalogue_profile
from tests.integration.helpers import credentials, enrolled_fleet, rows, shard

pytestmark = pytest.mark.broker

AGENTS = ("a0", "a1")


def _config(tmp_path: Path, broker_url: str, backbone: Path, run: str) -> CoordinatorConfig:
    return CoordinatorConfig.from_dict({
        "run_id": "fuzz", "run_dir": str(tmp_path / run), "broker": broker_url, "backbone": str(backbone),
        "enrolment": str(enrolled_fleet(tmp_path)), "eval_data": str(tmp_path / "test.jsonl"), "rounds": 3,
        "min_clients": 2, "expected_clients": 2, "local_steps": 2, "batch_size": 4, "registration_timeout_s": 60,
        "round_deadline_s": 120, "max_message_mb": 1.0, "max_frame_kb": 4, "planner": {"max_depth": 2, "ranks": [2]},
        "devices": {"cpu": {"rank": 2, "depth": 2}},
    })


def _agent(tmp_path: Path, broker_url: str, index: int, agent_id: str, kind=EdgeAgent, **extra) -> EdgeAgent:
    return kind(agent_id, BrokerConfig.from_url(broker_url, max_frame_bytes=1024), rows(shard(index)), load_catalogue_profile("cpu-8gb"), heartbeat_s=1,
                credentials=credentials(tmp_path, agent_id), cache_dir=tmp_path / f"cache-{agent_id}", **extra)


def _drive(coordinator: Coordinator, agents: list[EdgeAgent], attack=None) -> list[dict]:
    """The run to its end, agents in threads and ``attack(stop)`` alongside; every agent must end cleanly."""
    stop = threading.Event()
    threads = [threading.Thread(target=agent.run, daemon=True) for agent in agents]
    attacker = threading.Thread(target=attack, args=(stop,), daemon=True) if attack else None
    for thread in threads + ([attacker] if attacker else []):
        thread.start()
    try:
        summary = coordinator.run()
    finally:
        stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "every agent ends cleanly on the final state"
    if attacker:
        attacker.join(timeout=30)
    return summary.rounds


def _run(tmp_path: Path, broker_url: str, backbone: Path, run: str, attack=None):
    """One seeded run in this process (coordinator here, agents in threads); ``attack(stop)`` runs alongside."""
    coordinator = Coordinator(_config(tmp_path, broker_url, backbone, run))
    agents = [_agent(tmp_path, broker_url, index, agent_id) for index, agent_id in enumerate(AGENTS)]
    return coordinator, agents, _drive(coordinator, agents, attack)


class Attacker:
    """An anonymous client on the same broker that sees and sends what the default broker lets anyone do."""

    def __init__(self, broker_url: str, seed: int = 7):
        self.random = random.Random(seed)
        config = BrokerConfig.from_url(broker_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
        self.client.max_queued_messages_set(0)
        self.captured: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client.on_message = self._capture
        self.client.connect(config.host, config.port)
        self.client.subscribe("fedge/v1/agents/+/up", qos=0)
        self.client.subscribe("fedge/v1/agents/+/down", qos=0)
        self.client.subscribe("fedge/v1/agents/+/beat", qos=0)
        self.client.loop_start()
        self.sent: dict[str, int] = {}
        self.wrong_key = new_private_key()

    def _capture(self, client, userdata, message) -> None:
        if len(message.payload) < 200_000:
            with self.lock:
                self.captured.append((message.topic, bytes(message.payload)))
                del self.captured[:-200]

    def send(self, kind: str, topic: str, payload: bytes) -> None:
        self.last = self.client.publish(topic, payload, qos=0)
        self.sent[kind] = self.sent.get(kind, 0) + 1

    def forged(self, topic: str, message, sender: str, run: str = "fuzz") -> bytes:
        """Signed, but with a key that is not the sender's."""
        return Signer(sender, self.wrong_key).seal(topic, run, encode_message(message))

    def round_of_attacks(self) -> None:
        profile = load_catalogue_profile("cpu-8gb")
        tensors = {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": np.full((2, 64), 3e38, np.float32)}
        for agent_id in AGENTS + ("a5", "intruder"):
            up, down, beat = topics.uplink(agent_id), topics.downlink(agent_id), topics.heartbeat(agent_id)
            hostile = {
                "junk": self.random.randbytes(self.random.randint(0, 3000)),
                "deep_json": MAGIC + bytes([PROTOCOL_VERSION]) + struct.pack(">I", 60_000) + b"[" * 30_000 + b"]" * 30_000,
                "header_overrun": MAGIC + bytes([PROTOCOL_VERSION]) + struct.pack(">I", 2**31) + b"{}",
                "unsigned_hello": encode_message(Hello(agent_id, replace(profile, gflops=None), 10_000)),
                "unsigned_update": encode_message(AdapterUpdate("fuzz", 1, agent_id, 10_000, {}, tensors)),
                "forged_update": self.forged(up, AdapterUpdate("fuzz", 1, agent_id, 10_000, {"loss": 0.0}, tensors), agent_id),
                "forged_hello": self.forged(up, Hello(agent_id, replace(profile, gflops=-1.0), 5), agent_id, ""),
                "forged_heartbeat": self.forged(up, Heartbeat(agent_id, "idle", time.time(), 0), agent_id, ""),
                "forged_ready": self.forged(up, Heartbeat(agent_id, "ready", time.time(), 1), agent_id),
                "unsigned_ready": encode_message(Heartbeat(agent_id, "ready", time.time(), 1)),
                "forged_reject": self.forged(up, Reject(agent_id, "cannot_train", "x", 1), agent_id),
                "forged_receipt_up": self.forged(up, Receipt(agent_id, 1, "ab" * 16), agent_id),
                "forged_evaluation": self.forged(up, Evaluation("fuzz", 1, agent_id, 1.0, 0.0, 5), agent_id),
                "forged_backbone_request": self.forged(topics.fetch(agent_id), BackboneRequest(agent_id, "ab" * 32, 0, 64), agent_id),
                "oversized": b"\0" * 1_200_000,
                "bad_envelope": b"FEDS" + struct.pack(">H", 40) + b"[" * 40 + b"\0" * 64 + b"x",
            }
            lanes = {"forged_backbone_request": topics.fetch(agent_id)}
            for kind, payload in hostile.items():
                self.send(kind, lanes.get(kind, up), payload)
            # the heartbeat lane, where only each device's newest frame is kept: forged beats, updates and junk
            for kind, payload in {
                "beat_forged": self.forged(beat, Heartbeat(agent_id, "idle", time.time(), 0), agent_id, ""),
                "beat_forged_update": self.forged(beat, AdapterUpdate("fuzz", 1, agent_id, 10, {}, tensors), agent_id),
                "beat_junk": self.random.randbytes(self.random.randint(0, 3000)),
                "beat_chunk": CHUNK_MAGIC + struct.pack(">H", 2) + b"{}" + b"x" * 100,
            }.items():
                self.send(kind, beat, payload)
            # forged downlinks: a final state, an infeasible verdict, an assignment, a global state to train on
            for kind, message in {
                "forged_final": GlobalState("fuzz", 1, agent_id, True, {}, {}),
                "forged_final_more_runs": GlobalState("fuzz", 1, agent_id, True, {}, {}, more_runs=True),
                "forged_infeasible": Reject(agent_id, "infeasible", "stop"),
                "forged_bad_profile": Reject(agent_id, "bad_profile", "stop"),
                "forged_label_request": Reject(agent_id, "label_counts_wanted", "tell me"),
                "forged_unknown": Reject(agent_id, "unknown_agent", "say hello again"),
                "forged_receipt": Receipt(agent_id, 1, "ab" * 16),
                "forged_assignment": Assignment("fuzz", 9, agent_id, BackboneSpec("x", "0" * 64, "fp32"), LoraSpec(("q_proj",), (1,), (2,), 1.0), WORDNET_TASK, 1, 1, 1e-3, time.time() + 60, 0),
                "forged_prepare": Assignment("fuzz", 1, agent_id, BackboneSpec("x", "0" * 64, "nf4", 10**12, "http://evil.example/"), LoraSpec(("q_proj",), (1,), (64,), 1.0), TaskSpec("instruct", (), "sys", 10**6, "token_f1", 10**6, 10**6), 10**6, 10**4, 1e3, time.time() + 60, 0, prefix_cache_bytes=-1, prepare_only=True, clip_norm=-1.0, noise_multiplier=1e9, proximal_mu=float("nan"), galore_scale=-1.0),
                "forged_state": GlobalState("fuzz", 2, agent_id, False, {}, tensors),
                "forged_part": BackbonePart("ab" * 32, 0, b"x" * 100),
                "forged_assignment_naming_a_state": Assignment("fuzz", 2, agent_id, BackboneSpec("x", "0" * 64, "fp32"), LoraSpec(("q_proj",), (1,), (2,), 1.0), WORDNET_TASK, 1, 1, 1e-3, time.time() + 60, 0, state_digest="ab" * 32),
                "forged_unaddressed_state": GlobalState("fuzz", 2, "", False, {}, tensors),
            }.items():
                self.send(kind + "_unsigned", down, encode_message(message))
                self.send(kind, down, self.forged(down, message, "coordinator"))
            # a state on the shared stream (signed once for every device that shares it), with the wrong key
            shared = GlobalState("fuzz", 2, "", False, {}, tensors)
            self.send("forged_shared_state", down, Signer("coordinator", self.wrong_key).seal(down, "fuzz", encode_message(shared), SHARED_STREAM))
            # chunk frames that never finish, on the agent's topic and on fresh topics
            for index in range(5):
                header = json.dumps({"id": f"{self.random.random()}", "index": 0, "count": 1000, "size": 10**6}).encode()
                self.send("chunk_flood", up, CHUNK_MAGIC + struct.pack(">H", len(header)) + header + b"x" * 900)
            self.send("new_topic", topics.uplink(f"ghost-{self.random.randrange(10**9)}"), b"x" * 100)
        with self.lock:
            captured = list(self.captured)
        for topic, payload in captured[-20:]:  # replays of genuine traffic, as is and copied onto another device's topic
            self.send("replay", topic, payload)
            other = topic.replace("/a0/", "/a1/") if "/a0/" in topic else topic.replace("/a1/", "/a0/")
            self.send("copy_to_other_topic", other, payload)

    def run(self, stop: threading.Event) -> None:
        """As fast as the socket takes them: each burst waits until the previous one is written."""
        while not stop.is_set():
            self.round_of_attacks()
            self.last.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_run_under_attack_ends_with_the_unattacked_model(mosquitto, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    _, _, clean_rounds = _run(tmp_path, mosquitto.url, tiny_backbone, "clean")
    attacker = Attacker(mosquitto.url)
    coordinator, agents, rounds = _run(tmp_path, mosquitto.url, tiny_backbone, "attacked", attack=attacker.run)
    attacker.close()

    sent = sum(attacker.sent.values())
    assert sent >= 2000, attacker.sent
    assert {"replay", "copy_to_other_topic", "forged_final", "forged_update", "deep_json", "oversized", "forged_shared_state", "forged_unaddressed_state"} <= set(attacker.sent)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for record in rounds[1:]:
        assert record["contributors"] == list(AGENTS) and record["rejected"] == {}, record
        assert not record.get("aggregate_refused")
    refused = sum(sum(record.get("refused_messages", {}).values()) for record in rounds)
    assert refused > 100, "the coordinator saw and refused the attack"
    attacked_state = coordinator.run_dir.latest_global()[1]
    clean_state = RunDirectory(tmp_path / "clean").latest_global()[1]
    assert attacked_state.keys() == clean_state.keys()
    assert all(np.array_equal(attacked_state[key], clean_state[key]) for key in clean_state), "the attack changed the model"
    assert [r["accuracy"] for r in rounds] == [r["accuracy"] for r in clean_rounds]
    # nothing grew without bound: two registered devices, replay state per enrolled sender, partial messages capped
    assert sorted(record.agent_id for record in coordinator.registry.all()) == list(AGENTS)
    assert coordinator.transport._reassembler.pending_bytes <= coordinator.transport._reassembler.max_pending_bytes
    assert coordinator.transport._reassembler.pending <= coordinator.transport._reassembler.max_pending
    assert len(coordinator.transport.codec.verifier._last) <= 2 * len(AGENTS) + 2
    assert set(coordinator.admission.told_unknown) <= set(AGENTS)  # a genuine device may be asked for its hello; a forger never
    assert all(agent.refused is None for agent in agents)


class InsiderFlood:
    """An enrolled device's own key, flooding its own topics: hellos, heartbeats and never-finishing chunked
    messages, all correctly signed (what a compromised device can send that an outsider cannot)."""

    def __init__(self, broker_url: str, tmp_path: Path, agent_id: str):
        self.agent_id = agent_id
        device = credentials(tmp_path, agent_id)
        self.signer = Signer(agent_id, device.signing_key())
        config = BrokerConfig.from_url(broker_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{agent_id}")
        self.client.max_queued_messages_set(0)
        self.client.connect(config.host, config.port)
        self.client.loop_start()
        self.sent = 0

    def run(self, stop: threading.Event) -> None:
        up, beat = topics.uplink(self.agent_id), topics.heartbeat(self.agent_id)
        profile = load_catalogue_profile("cpu-8gb")
        while not stop.is_set():
            self.client.publish(up, self.signer.seal(up, "", encode_message(Hello(self.agent_id, profile, len(shard(3))))))
            step, steps = ((10**12, 5), (-1, -1), (3, 10**9))[self.sent % 3]  # progress no device could have made
            state = "training" if self.sent % 8 else "idle"  # and idle, which gets the insider its work sent again
            self.client.publish(beat, self.signer.seal(beat, "", encode_message(Heartbeat(self.agent_id, state, time.time(), 0, step=step, steps=steps)), "beat"))
            for topic in (up, beat):  # the first frames of ~1 MB messages that never finish, on its own topics
                header = json.dumps({"id": f"{self.sent}-{topic[-2:]}", "index": 0, "count": 256, "size": 900_000}).encode()
                self.client.publish(topic, CHUNK_MAGIC + struct.pack(">H", len(header)) + header + b"x" * 3000)
            self.sent += 4
            time.sleep(0.01)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _run_with_insider(tmp_path: Path, broker_url: str, backbone: Path, run: str, insider: str | None, robust: RobustRules = RobustRules()):
    """Four enrolled agents; ``insider``: the attack the last one makes (it also floods its own topics)."""
    from fedge.shell.trial.insider import InsiderAgent

    config = replace(_config(tmp_path, broker_url, backbone, run), min_clients=3, expected_clients=4, robust=robust)
    coordinator = Coordinator(config)
    agents = [_agent(tmp_path, broker_url, index, agent_id, **({"kind": InsiderAgent, "attack": insider} if insider and agent_id == "a3" else {})) for index, agent_id in enumerate(("a0", "a1", "a2", "a3"))]
    flood = InsiderFlood(broker_url, tmp_path, "a3") if insider else None
    rounds = _drive(coordinator, agents, flood.run if flood else None)
    if flood:
        flood.close()
    return coordinator, rounds, flood


def _movement(state: dict, start: dict) -> float:
    return float(np.sqrt(sum(np.square(state[key].astype(np.float64) - start[key]).sum() for key in start)))


def test_an_enrolled_insider_that_floods_and_poisons_cannot_steer_the_model(mosquitto, tiny_backbone, tmp_path):
    """The last of four enrolled agents signs updates scaled ×−200 and floods its own topics with signed hellos,
    heartbeats and never-finishing chunked messages. The honest devices' updates all arrive and count; the insider is
    named an outlier and (quarantine_after: 2) quarantined; its flood is rate-limited and held to its own budget; and the final model
    stays near the model of the same fleet all honest (the insider's data is lost, nothing more), where today's
    rules (a weighted mean) let it run away."""
    write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
    _, clean_rounds, _ = _run_with_insider(tmp_path, mosquitto.url, tiny_backbone, "honest", None)
    coordinator, rounds, flood = _run_with_insider(tmp_path, mosquitto.url, tiny_backbone, "insider", "scale", RobustRules(quarantine_after=2))
    assert flood.sent > 200
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for record in rounds[1:]:
        assert {"a0", "a1", "a2"} <= set(record["contributors"]), record["left_out"]
    assert "a3" in rounds[1]["robust"]["outliers"] and "a3" in rounds[2]["robust"]["outliers"]
    assert rounds[3]["left_out"]["a3"].startswith("quarantined after round 2")
    refused = {}
    for record in rounds:
        for reason, count in record.get("refused_messages", {}).items():
            refused[reason] = refused.get(reason, 0) + count
    assert refused.get("rate_limited", 0) > 50, refused
    shown = coordinator.live.monitor.status().devices
    assert all(0 <= device.step <= device.steps <= MAX_REPORTED_STEPS for device in shown) and {device.agent_id for device in shown} >= {"a0", "a1", "a2", "a3"}
    reassembler = coordinator.transport._reassembler
    assert reassembler.sender_bytes("a3") <= reassembler.max_sender_bytes and reassembler.pending_bytes <= reassembler.max_pending_bytes
    start = RunDirectory(tmp_path / "honest").load_global(0)
    honest_final, attacked_final = RunDirectory(tmp_path / "honest").latest_global()[1], coordinator.run_dir.latest_global()[1]
    learned = _movement(honest_final, start)
    assert _movement(attacked_final, {key: honest_final[key] for key in start}) < learned  # within the honest run's own scale
    _run_with_insider(tmp_path, mosquitto.url, tiny_backbone, "today", "scale", RobustRules(combiner="mean", norm_multiple=0, share_factor=1000, quarantine_after=0))
    today_final = RunDirectory(tmp_path / "today").latest_global()[1]
    assert _movement(today_final, {key: honest_final[key] for key in start}) > 10 * learned  # what the bound prevents
    assert abs(rounds[-1]["accuracy"] - clean_rounds[-1]["accuracy"]) <= 0.125  # two of the sixteen held-out rows
