"""The trust boundary under load: what signing costs, and what a flood of hostile messages costs the coordinator.

1. Per message: seal + open (Ed25519 over the topic, meta and bytes, plus the replay check) against plain
   encode + decode, for a heartbeat and an adapter update of the demo's size.
2. A round: the same seeded fleet (coordinator and two agents over Mosquitto) signed against unsigned
   (``insecure: true``); the median round wall time of each and their ratio.
3. A flood at the coordinator's receiving side (its transport, codec, reassembly and refusal log, as the round loop
   runs them) over Mosquitto: forged updates, junk, replays, never-finished chunked messages on enrolled topics, and
   frames on a fresh topic each. Prints messages handled per second against the same count of genuine heartbeats
   (the baseline), whether handling slows as the distinct topics pile up (last tenth against first tenth), and the
   process's RSS and the partial messages held before and after.

    python benchmarks/hostile.py [--quick] [--backbone smollm2-135m-instruct] [--flood 50000] [--rounds 3]

``--quick`` uses a tiny random-weight model for the rounds (their wire and signing cost is what is measured, not
learning) and a smaller flood.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from fedge.coordinator.boundary import FleetKeys, coordinator_codec
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.edge_agent.agent import EdgeAgent
from fedge.trust.downlink import DownlinkCodec
from fedge.broker import free_port
from fedge.task.data import Example, write_jsonl
from fedge.transport import BrokerConfig, MqttTransport
from fedge.trust.enrolment import Credentials, coordinator_credentials, device_credentials_path, enroll
from fedge.trust.keys import new_private_key
from fedge.wire import AdapterUpdate, Heartbeat, Limits, Signer, Verifier, decode_message, encode_message, topics
from fedge.wire.chunks import CHUNK_MAGIC
from fedge.wire.sealing import PlainCodec
from fedge.profiles import load_catalogue_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_model: the random model for --quick
console = Console(width=160)
UPDATE_VALUES = 50_000  # about the demo's update: q/v LoRA on the top layers of SmolLM2, fp16


def per_message(repeats: int) -> list[tuple[str, float, float]]:
    """(message, plain µs, signed µs) for encode+decode against seal+open."""
    key = new_private_key()
    limits = Limits()
    rows = []
    topic = topics.uplink("a0")
    update = AdapterUpdate("run", 1, "a0", 100, {"loss": 1.0}, {"m.lora_A.weight": np.ones((UPDATE_VALUES // 576, 576), np.float32)})
    for name, message in (("heartbeat", Heartbeat("a0", "idle", time.time(), 3)), (f"update ({UPDATE_VALUES:,} values)", update)):
        signed = _SignedPair(key)
        plain = PlainCodec(limits)
        times = {}
        for label, codec in (("plain", plain), ("signed", signed)):
            started = time.perf_counter()
            for _ in range(repeats):
                codec.open(topic, codec.seal(topic, message))
            times[label] = (time.perf_counter() - started) / repeats * 1e6
        rows.append((name, times["plain"], times["signed"]))
    return rows


class _SignedPair:
    """Seal and open with one key, as a sender and its receiver do between them."""

    def __init__(self, key):
        self.signer, self.verifier, self.limits = Signer("a0", key), Verifier({"a0": key.public_key()}.get), Limits()

    def seal(self, topic, message):
        return self.signer.seal(topic, "run", encode_message(message))

    def open(self, topic, data):
        return decode_message(self.verifier.open(topic, data).payload, self.limits)


def round_times(broker_url: str, backbone: str, fleet: Path, work: Path, rounds: int, steps: int, batch: int, signed: bool) -> list[float]:
    """Round wall times of one seeded run of two agents (in threads) and the coordinator (here)."""
    run_dir = work / ("signed" if signed else "unsigned")
    config = CoordinatorConfig.from_dict({
        "run_id": run_dir.name, "run_dir": str(run_dir), "broker": broker_url, "backbone": backbone,
        **({"enrolment": str(fleet)} if signed else {"insecure": True}), "eval_data": str(work / "test.jsonl"),
        "rounds": rounds, "min_clients": 2, "expected_clients": 2, "local_steps": steps, "batch_size": batch,
        "planner": {"max_depth": 2, "ranks": [4]}, "devices": {"cpu": {"rank": 4, "depth": 2}},
    })
    agents = [
        EdgeAgent(agent_id, BrokerConfig.from_url(broker_url), _rows(index), load_catalogue_profile("cpu-8gb"), heartbeat_s=2, cache_dir=work / "cache",
                  credentials=Credentials.load(device_credentials_path(fleet, agent_id)) if signed else None)
        for index, agent_id in enumerate(("a0", "a1"))
    ]
    threads = [threading.Thread(target=agent.run, daemon=True) for agent in agents]
    for thread in threads:
        thread.start()
    summary = Coordinator(config).run()
    for thread in threads:
        thread.join(timeout=60)
    return [record["wall_s"] for record in summary.rounds[1:]]


def _rows(seed: int):
    from fedge.task.data import Row

    words = ["animal", "food", "plant", "time", "place", "body", "person", "substance"]
    return [Row(f"{words[(i + seed) % 8]} of {words[(i * 3) % 8]}", (i + seed) % 8, i + 1) for i in range(64)]


def send_genuine(broker_url: str, fleet: str, count: int) -> None:
    """(In its own process.) ``count`` signed heartbeats from a0, as fast as it can publish them."""
    genuine = MqttTransport(BrokerConfig.from_url(broker_url), "genuine-a0", codec=DownlinkCodec(Credentials.load(device_credentials_path(fleet, "a0"))))
    genuine.connect()
    queued = [genuine.enqueue(topics.uplink("a0"), Heartbeat("a0", "idle", time.time(), index), stream="beat") for index in range(count)]
    genuine.wait_sent(queued[-1:], 60)
    genuine.close()


def send_flood(broker_url: str, count: int, seed: int) -> None:
    """(In its own process.) Forged updates, junk, a replayed heartbeat, never-finished chunked messages and frames
    on a fresh topic each, in turn; QoS 0, as fast as the client can write them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{seed}")
    config = BrokerConfig.from_url(broker_url)
    client.max_queued_messages_set(0)
    client.connect(config.host, config.port)
    client.loop_start()
    wrong = Signer("a0", new_private_key())
    forged_update = wrong.seal(topics.uplink("a0"), "run", encode_message(AdapterUpdate("run", 1, "a0", 10**4, {}, {"m.lora_A.weight": np.full((8, 576), 1000.0, np.float32)})))
    stale = wrong.seal(topics.uplink("a0"), "run", encode_message(Heartbeat("a0", "idle", time.time())))
    rng = np.random.default_rng(seed)
    last = None
    for index in range(count):
        kind = index % 5
        if kind == 0:
            last = client.publish(topics.uplink(f"a{index % 2}"), forged_update, qos=0)
        elif kind == 1:
            last = client.publish(topics.uplink("a1"), rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), qos=0)
        elif kind == 2:
            last = client.publish(topics.uplink("a0"), stale, qos=0)
        elif kind == 3:  # a chunked message that never finishes, on an enrolled topic
            header = json.dumps({"id": f"flood-{seed}-{index}", "index": 0, "count": 100, "size": 100_000}).encode()
            last = client.publish(topics.uplink("a1"), CHUNK_MAGIC + struct.pack(">H", len(header)) + header + b"x" * 1000, qos=0)
        else:  # a frame on a topic never seen before: dropped on the network thread
            last = client.publish(topics.uplink(f"ghost-{seed}-{index}"), b"x" * 200, qos=0)
    last.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def flood(broker_url: str, fleet: Path, count: int) -> dict:
    """Flood the coordinator's receiving side (the senders run in their own processes, so this process's RSS is
    the receiver's); returns its figures."""
    fleet_keys = FleetKeys(fleet)
    codec = coordinator_codec(fleet_keys, coordinator_credentials(fleet), "run", Limits(max_message_bytes=1024 * 1024))
    # an inbox deep enough for a whole flood: the senders finish first, then the owner thread's handling is timed
    receiver = MqttTransport(BrokerConfig.from_url(broker_url), "flood-coordinator", codec=codec, accept=fleet_keys.accepts_topic, max_inbox_frames=count + 10)
    receiver.subscribe(topics.all_uplinks())
    receiver.connect()
    process = psutil.Process()
    spawn = multiprocessing.get_context("spawn")

    def handle(expected: int) -> tuple[float, list[float]]:
        """Receive until ``expected`` whole (or refused) messages came out; the time and the rate in each tenth."""
        handled, marks, started = 0, [], time.perf_counter()
        while handled < expected and receiver.receive(timeout_s=1.0) is not None:
            handled += 1
            if handled % max(expected // 10, 1) == 0:
                marks.append(time.perf_counter())
        tenths = [max(expected // 10, 1) / (b - a) for a, b in zip([started] + marks, marks)]
        return time.perf_counter() - started, tenths

    def sent(target, *args) -> None:
        sender = spawn.Process(target=target, args=args)
        sender.start()
        sender.join()
        while True:  # until the broker has delivered everything
            queued = receiver.waiting_frames
            time.sleep(0.5)
            if receiver.waiting_frames == queued:
                return

    sent(send_genuine, broker_url, str(fleet), count)
    baseline_s, _ = handle(count)
    rss = [process.memory_info().rss]
    rates, scaling = [], []
    expected = count - 2 * (count // 5)  # chunk frames that never finish and fresh-topic frames come out as nothing
    for seed in (1, 2):  # a second flood shows whether anything kept growing
        sent(send_flood, broker_url, count, seed)
        elapsed, tenths = handle(expected)
        rates.append((count - count // 5) / elapsed)  # every frame the owner thread read, partial ones included
        scaling.append(tenths[-1] / tenths[0] if len(tenths) > 1 else float("nan"))
        rss.append(process.memory_info().rss)
    figures = {
        "baseline_per_s": count / baseline_s,
        "flood_per_s": statistics.mean(rates),
        "distinct_topics_dropped": receiver.dropped_frames,
        "last_vs_first_tenth": statistics.mean(scaling),
        "rss_mib": [value / 2**20 for value in rss],
        "pending_messages": receiver._reassembler.pending,
        "pending_mib": receiver._reassembler.pending_bytes / 2**20,
    }
    receiver.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny random model for the rounds, a 5,000-message flood")
    parser.add_argument("--backbone", default="smollm2-135m-instruct", help="the model the rounds train (full mode)")
    parser.add_argument("--flood", type=int, default=50_000, help="messages in the flood")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run for the signed/unsigned comparison")
    args = parser.parse_args()
    flood_count = 5_000 if args.quick else args.flood
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        fleet = work / "fleet"
        enroll(fleet, ["a0", "a1"])
        port = free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nset_tcp_nodelay true\n")
        broker = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            url = f"mqtt://127.0.0.1:{port}"
            table = Table(title="Per message: plain encode + decode against seal + open (Ed25519)")
            for column in ("message", "plain µs", "signed µs", "ratio"):
                table.add_column(column, justify="right")
            for name, plain, signed in per_message(20 if args.quick else 200):
                table.add_row(name, f"{plain:.0f}", f"{signed:.0f}", f"{signed / plain:.2f}×")
            console.print(table)

            backbone = args.backbone
            if args.quick:
                from tests.tiny_model import build_tiny_backbone

                backbone = str(build_tiny_backbone(work / "tiny"))
            write_jsonl(work / "test.jsonl", [Example("food of time", i % 8) for i in range(16)])
            steps, batch = (3, 4) if args.quick else (10, 16)  # full mode: the demo's round of 10 steps of 16
            unsigned = round_times(url, backbone, fleet, work, rounds, steps, batch, signed=False)
            signed = round_times(url, backbone, fleet, work, rounds, steps, batch, signed=True)
            console.print(f"round wall time, median of {rounds}: unsigned {statistics.median(unsigned):.2f} s, signed {statistics.median(signed):.2f} s: "
                          f"signing and checking overhead {statistics.median(signed) / statistics.median(unsigned):.2f}× ({backbone})")

            figures = flood(url, fleet, flood_count)
            console.print(f"two floods of {flood_count:,} hostile messages: {figures['flood_per_s']:,.0f} handled/s against {figures['baseline_per_s']:,.0f}/s for genuine signed heartbeats "
                          f"({figures['flood_per_s'] / figures['baseline_per_s']:.2f}×)")
            console.print(f"{figures['distinct_topics_dropped']:,} frames on distinct unenrolled topics dropped on the network thread; handling rate in the last tenth "
                          f"against the first: {figures['last_vs_first_tenth']:.2f}×")
            before, first, second = figures["rss_mib"]
            console.print(f"receiver RSS before the floods {before:.0f} MiB, after the first {first:.0f} MiB, after the second {second:.0f} MiB; partial messages held "
                          f"{figures['pending_messages']} ({figures['pending_mib']:.1f} MiB, bounded)")
        finally:
            broker.terminate()
            broker.wait(timeout=10)


if __name__ == "__main__":
    main()
