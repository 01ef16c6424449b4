"""Wire cost of one adapter update: bytes per client per round, and transfer time through a real broker.

Prints, for the demo fleet's adapters on SmolLM2-135M (shapes read from the model config, no weights needed):
  * bytes of a fedge update (fp16 safetensors body + JSON header) against an fp32 LoRA state dict (safetensors);
  * time for a fedge update to cross Mosquitto (publish -> subscriber has the decoded message) against
    ``mosquitto_pub`` sending the same bytes to the same subscriber, as a ratio.

    python benchmarks/wire.py [--repeats 5]
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

from fedge.demo import FLEET
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import AdapterUpdate, encode_message, split_frames
from quantization.backbone import locate_backbone

MODULE_SHAPES = {"q_proj": ("self_attn", "hidden", "hidden"), "v_proj": ("self_attn", "hidden", "kv")}


def adapter_for(config, rank: int, depth: int) -> dict[str, np.ndarray]:
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    sizes = {"hidden": config.hidden_size, "kv": kv}
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(config.num_hidden_layers - depth, config.num_hidden_layers):
        for module, (parent, fan_in, fan_out) in MODULE_SHAPES.items():
            stem = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            tensors[f"{stem}.lora_A.weight"] = rng.normal(size=(rank, sizes[fan_in])).astype(np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.normal(size=(sizes[fan_out], rank)).astype(np.float32)
    return tensors


def _start_mosquitto(directory: Path) -> tuple[subprocess.Popen, int]:
    from fedge.broker import free_port

    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
    process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


def _time_fedge(sender: MqttTransport, receiver: MqttTransport, update: AdapterUpdate) -> float:
    started = time.perf_counter()
    sender.publish("bench/fedge", update)
    received = receiver.receive(timeout_s=60)
    assert received is not None and received.message is not None
    return time.perf_counter() - started


def _time_mosquitto_pub(port: int, payload_file: Path, receiver: MqttTransport) -> float:
    started = time.perf_counter()
    subprocess.run(["mosquitto_pub", "-p", str(port), "-q", "1", "-t", "bench/raw", "-f", str(payload_file)], check=True)
    received = receiver.receive(timeout_s=60)
    assert received is not None and received.raw is not None
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(locate_backbone().directory)
    fleet = [(device, plan["rank"], plan["depth"]) for device, plan in FLEET] + [("stress: rank 64, all layers", 64, config.num_hidden_layers)]
    print(f"SmolLM2-135M ({config.num_hidden_layers} layers, hidden {config.hidden_size}); LoRA on q_proj, v_proj\n")
    print(f"{'device':<30}{'rank':>5}{'depth':>6}{'fp32 state dict':>17}{'fedge fp16':>12}{'ratio':>7}")
    updates = []
    for device, rank, depth in fleet:
        tensors = adapter_for(config, rank, depth)
        update = AdapterUpdate("bench", 1, "bench", 100, {"loss": 1.0}, tensors)
        fp32 = len(save_tensors(tensors))
        fedge = len(encode_message(update))
        updates.append((device, update))
        print(f"{device:<30}{rank:>5}{depth:>6}{fp32:>17,}{fedge:>12,}{fedge / fp32:>7.3f}")

    with tempfile.TemporaryDirectory() as scratch:
        broker, port = _start_mosquitto(Path(scratch))
        try:
            url = f"mqtt://127.0.0.1:{port}"
            receiver = MqttTransport(BrokerConfig.from_url(url), "bench-receiver")
            receiver.subscribe("bench/fedge")
            receiver.subscribe("bench/raw", raw=True)
            receiver.connect()
            sender = MqttTransport(BrokerConfig.from_url(url), "bench-sender")
            sender.connect()
            print(f"\ntransfer through Mosquitto, median of {args.repeats} (fedge: encode + chunk + publish + reassemble + decode)")
            print(f"{'device':<30}{'bytes':>12}{'frames':>7}{'fedge ms':>10}{'mosquitto_pub ms':>18}{'ratio':>7}")
            for device, update in updates:
                payload = encode_message(update)
                payload_file = Path(scratch) / "payload.bin"
                payload_file.write_bytes(payload)
                fedge_times = [_time_fedge(sender, receiver, update) for _ in range(args.repeats)]
                raw_times = [_time_mosquitto_pub(port, payload_file, receiver) for _ in range(args.repeats)]
                fedge_ms, raw_ms = statistics.median(fedge_times) * 1e3, statistics.median(raw_times) * 1e3
                print(f"{device:<30}{len(payload):>12,}{len(split_frames(payload)):>7}{fedge_ms:>10.1f}{raw_ms:>18.1f}{fedge_ms / raw_ms:>7.2f}")
            sender.close()
            receiver.close()
        finally:
            broker.terminate()


if __name__ == "__main__":
    main()
