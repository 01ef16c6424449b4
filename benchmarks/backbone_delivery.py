"""Backbone delivery over MQTT: goodput against mosquitto_pub/mosquitto_sub, resume after a kill, bytes per device.

    python benchmarks/backbone_delivery.py [--quick]

With the real SmolLM2-135M packages (NF4, bf16, fp32, built by the coordinator's packager) it prints:
  * bytes an agent downloads for each quantization;
  * the NF4 package fetched by an agent with an empty cache from the coordinator's backbone server through
    Mosquitto (manifest, windowed chunk requests, per-chunk checks, whole-file checks), against mosquitto_pub
    sending the same bytes to mosquitto_sub in the same run: goodput as a share of theirs (goal >= 0.8);
  * a download killed half way and restarted: time to finish against a full download.
``--quick`` uses a synthetic 24 MB package (no model needed) and one repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from wire import start_mosquitto

from fedge.coordinator.delivery import BackboneServer
from fedge.edge_agent.fetch import BackboneFetcher
from fedge.delivery import PackageStore, build_manifest
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import BackboneSpec, topics
from fedge.quantization.package import BackbonePackage, chunk_bytes_for

CHUNK_BYTES = chunk_bytes_for(512)  # the coordinator's default max_frame_kb


class _Killed(Exception):
    pass


def synthetic_package(directory: Path, size: int) -> BackbonePackage:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(os.urandom(size))
    manifest = build_manifest(directory, "synthetic", "nf4", CHUNK_BYTES)
    return BackbonePackage(directory, manifest, manifest.to_bytes())


def real_packages() -> dict[str, BackbonePackage]:
    from fedge.quantization.backbone import locate_backbone
    from fedge.quantization.package import package_backbone

    source = locate_backbone()
    return {quantization: package_backbone(source, quantization, CHUNK_BYTES) for quantization in ("nf4", "bf16", "fp32")}


def fetch(url: str, package: BackbonePackage, cache: Path, agent_id: str, kill_after: int | None = None) -> float:
    """Seconds for an agent to complete ``package`` into ``cache`` (raises _Killed after ``kill_after`` chunks)."""
    transport = MqttTransport(BrokerConfig.from_url(url), client_id=f"bench-{agent_id}-{time.monotonic_ns()}")
    transport.subscribe(topics.downlink(agent_id))
    transport.connect()
    original = PackageStore.write_chunk
    written = [0]

    def write_chunk(store, index, data):
        if kill_after is not None and written[0] >= kill_after:
            raise _Killed
        written[0] += 1
        return original(store, index, data)

    PackageStore.write_chunk = write_chunk
    try:
        started = time.perf_counter()
        BackboneFetcher(transport, agent_id, cache, defer=lambda received: None).fetch(BackboneSpec("bench", package.digest, "nf4", package.manifest.total_bytes))
        return time.perf_counter() - started
    finally:
        PackageStore.write_chunk = original
        transport.close()


def mosquitto_pub_sub(port: int, stream_file: Path) -> float:
    """Seconds for mosquitto_pub to move ``stream_file`` to a mosquitto_sub that exits on receipt."""
    subscriber = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-q", "1", "-t", "bench/raw", "-C", "1"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)  # let it subscribe
    started = time.perf_counter()
    subprocess.run(["mosquitto_pub", "-p", str(port), "-q", "1", "-t", "bench/raw", "-f", str(stream_file)], check=True)
    subscriber.wait(timeout=120)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a synthetic 24 MB package, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        packages = {"nf4": synthetic_package(scratch / "package", 24 * 1024 * 1024)} if args.quick else real_packages()
        print("bytes an agent downloads per quantization (weights, config, tokenizer):")
        for quantization, package in packages.items():
            print(f"  {quantization:<5} {package.manifest.total_bytes / 1e6:8.1f} MB in {package.manifest.chunk_count} chunks of {CHUNK_BYTES // 1024} KiB")
        package = packages["nf4"]
        stream_file = scratch / "stream.bin"
        with stream_file.open("wb") as out:
            for entry in package.manifest.files:
                out.write((package.directory / entry.path).read_bytes())
        broker, port = start_mosquitto(scratch)
        url = f"mqtt://127.0.0.1:{port}"
        server = BackboneServer(BrokerConfig.from_url(url), client_id="bench-backbone-server")
        server.offer(package)
        server.start()
        try:
            full = []
            for repeat in range(repeats):
                server.allow(f"agent{repeat}", package.digest)
                full.append(fetch(url, package, scratch / f"cache{repeat}", f"agent{repeat}"))
            raw = [mosquitto_pub_sub(port, stream_file) for _ in range(repeats)]
            fedge_s, raw_s = statistics.median(full), statistics.median(raw)
            size_mb = package.manifest.total_bytes / 1e6
            print(f"\nNF4 package ({size_mb:.1f} MB) through Mosquitto, median of {repeats}:")
            print(f"  fedge backbone server -> agent (empty cache): {fedge_s:6.2f} s  {size_mb / fedge_s:7.1f} MB/s")
            print(f"  mosquitto_pub -> mosquitto_sub, same bytes:   {raw_s:6.2f} s  {size_mb / raw_s:7.1f} MB/s")
            print(f"  goodput vs mosquitto_pub/sub: {raw_s / fedge_s:.2f}×")

            server.allow("killed", package.digest)
            half = package.manifest.chunk_count // 2
            try:
                fetch(url, package, scratch / "killed", "killed", kill_after=half)
            except _Killed:
                pass
            time.sleep(1.0)  # chunks already in flight to the dead agent drain
            resumed = fetch(url, package, scratch / "killed", "killed")
            print(f"\nkilled after {half} of {package.manifest.chunk_count} chunks, restarted: finished in {resumed:.2f} s against {fedge_s:.2f} s for a full download ({resumed / fedge_s:.2f}×)")
        finally:
            server.close()
            broker.terminate()


if __name__ == "__main__":
    main()
