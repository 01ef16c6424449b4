"""Wire cost of one adapter update: bytes per client per round, and transfer time through a real broker.

Prints, for the demo fleet's planned adapters on SmolLM2-135M (shapes from the model config, no weights needed):
  * bytes of a fedge update (fp16 safetensors body + JSON header) against an fp32 LoRA state dict (safetensors);
  * time for a fedge update to cross Mosquitto (encode, chunk, publish, reassemble, decode) against
    ``mosquitto_pub`` sending the same bytes to the same subscriber, and fedge's goodput as a share of
    mosquitto_pub's (goal >= 0.8).

    python benchmarks/wire.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_tensors

from fedge.coordinator.plans import FleetMember, PlannerOptions

from fedge.coordinator.planner import plan_fleet
from fedge.broker import free_port
from fedge.shell.demo import FLEET, PLANNER
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import AdapterUpdate, encode_message, split_frames
from fedge.profiles import simulated_profile
from fedge.profiles.model_shape import ModelShape, load_model_shape

TARGETS = ("q_proj", "v_proj")


def adapter_for(shape: ModelShape, layers: tuple[int, ...], ranks: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {}
    for layer, rank in zip(layers, ranks):
        for module in TARGETS:
            out_features, in_features = shape.module_dims(module)
            stem = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{stem}.lora_A.weight"] = rng.normal(size=(rank, in_features)).astype(np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.normal(size=(out_features, rank)).astype(np.float32)
    return tensors


def demo_adapters(shape: ModelShape) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(device, layers, ranks) as the capacity planner plans the demo fleet."""
    members = [FleetMember(name, simulated_profile(name, False, True), 160) for name in FLEET]
    options = PlannerOptions(max_depth=PLANNER["max_depth"], ranks=tuple(PLANNER["ranks"]), target_modules=TARGETS)
    return [(plan.device_id, plan.layers, plan.ranks) for plan in plan_fleet(members, shape, options).feasible()]


def start_mosquitto(directory: Path) -> tuple[subprocess.Popen, int]:
    """Mosquitto as fedge recommends it: without ``set_tcp_nodelay`` the tail of a chunked message waits for the
    subscriber's delayed ACK (about 40 ms on Linux)."""
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\n")
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


def _time_fedge(sender: MqttTransport, receiver: MqttTransport, update: AdapterUpdate) -> float:
    started = time.perf_counter()
    sender.publish("bench/fedge", update)
    received = receiver.receive(timeout_s=60)
    assert received is not None and received.message is not None, received
    return time.perf_counter() - started


def time_mosquitto_pub(port: int, payload_file: Path, receiver: MqttTransport) -> float:
    started = time.perf_counter()
    subprocess.run(["mosquitto_pub", "-p", str(port), "-q", "1", "-t", "bench/raw", "-f", str(payload_file)], check=True)
    received = receiver.receive(timeout_s=60)
    assert received is not None and received.raw is not None
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat of the largest update, to check the benchmark still runs")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    shape = load_model_shape("smollm2-135m-instruct")
    fleet = [] if args.quick else demo_adapters(shape)
    fleet.append(("stress: rank 64, all layers", tuple(range(shape.num_layers)), (64,) * shape.num_layers))
    print(f"SmolLM2-135M ({shape.num_layers} layers, hidden {shape.hidden_size}); LoRA on q_proj, v_proj\n")
    print(f"{'device':<30}{'ranks':>12}{'depth':>6}{'fp32 state dict':>17}{'fedge fp16':>12}{'ratio':>7}")
    updates = []
    for device, layers, ranks in fleet:
        tensors = adapter_for(shape, layers, ranks)
        as_sent = {key: value.astype(np.float16) for key, value in tensors.items()}  # agents hand the codec fp16
        update = AdapterUpdate("bench", 1, "bench", 100, {"loss": 1.0}, as_sent)
        fp32, fedge = len(save_tensors(tensors)), len(encode_message(update))
        updates.append((device, update))
        label = "/".join(map(str, sorted(set(ranks), reverse=True)))
        print(f"{device:<30}{label:>12}{len(layers):>6}{fp32:>17,}{fedge:>12,}{fedge / fp32:>7.3f}")

    with tempfile.TemporaryDirectory() as scratch:
        broker, port = start_mosquitto(Path(scratch))
        try:
            url = f"mqtt://127.0.0.1:{port}"
            receiver = MqttTransport(BrokerConfig.from_url(url), "bench-receiver")
            receiver.subscribe("bench/fedge")
            receiver.subscribe("bench/raw", raw=True)
            receiver.connect()
            sender = MqttTransport(BrokerConfig.from_url(url), "bench-sender")
            sender.connect()
            print(f"\ntransfer through Mosquitto, median of {repeats} (fedge: encode + chunk + publish + reassemble + decode)")
            print(f"{'device':<30}{'bytes':>12}{'frames':>7}{'fedge ms':>10}{'mosquitto_pub ms':>18}{'goodput vs mosquitto_pub':>26}")
            for device, update in updates:
                payload = encode_message(update)
                payload_file = Path(scratch) / "payload.bin"
                payload_file.write_bytes(payload)
                fedge_ms = statistics.median(_time_fedge(sender, receiver, update) for _ in range(repeats)) * 1e3
                raw_ms = statistics.median(time_mosquitto_pub(port, payload_file, receiver) for _ in range(repeats)) * 1e3
                print(f"{device:<30}{len(payload):>12,}{len(list(split_frames(payload))):>7}{fedge_ms:>10.1f}{raw_ms:>18.1f}{raw_ms / fedge_ms:>25.2f}×")
            sender.close()
            receiver.close()
        finally:
            broker.terminate()


if __name__ == "__main__":
    main()
