"""The backbone travels over MQTT: verified chunks, resume after a kill, agents fetching at once, only to assignees."""

from __future__ import annotations

import threading

import pytest

from fedge.coordinator.delivery import BackboneServer
from fedge.edge_agent.fetch import BackboneFetcher
from fedge.delivery import DeliveryError, PackageStore, build_manifest
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import BackboneSpec, topics
from fedge.quantization.package import BackbonePackage

pytestmark = pytest.mark.broker


@pytest.fixture
def package(tmp_path) -> BackbonePackage:
    directory = tmp_path / "package"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * 800)  # 200 KB: 51 chunks of 4 KB with the config
    manifest = build_manifest(directory, "tiny", "nf4", 4096)
    return BackbonePackage(directory, manifest, manifest.to_bytes())


@pytest.fixture
def server(mosquitto, package):
    server = BackboneServer(BrokerConfig.from_url(mosquitto.url), client_id="backbone-test")
    server.offer(package)
    server.start()
    yield server
    server.close()


def _agent(url: str, agent_id: str) -> MqttTransport:
    transport = MqttTransport(BrokerConfig.from_url(url), client_id=f"agent-{agent_id}")
    transport.subscribe(topics.downlink(agent_id))
    transport.connect()
    return transport


def _spec(package: BackbonePackage) -> BackboneSpec:
    return BackboneSpec("tiny", package.digest, "nf4", package.manifest.total_bytes)


def test_a_killed_download_resumes_from_its_verified_chunks(mosquitto, server, package, tmp_path, monkeypatch):
    server.allow("a1", package.digest)
    transport = _agent(mosquitto.url, "a1")
    written = []
    original = PackageStore.write_chunk

    def dies_after_twenty(self, index, data):
        if len(written) == 20:
            raise KeyboardInterrupt  # the agent is killed mid-transfer
        written.append(index)
        return original(self, index, data)

    monkeypatch.setattr(PackageStore, "write_chunk", dies_after_twenty)
    with pytest.raises(KeyboardInterrupt):
        BackboneFetcher(transport, "a1", tmp_path / "cache", defer=lambda received: None, window=8).fetch(_spec(package))
    transport.close()
    monkeypatch.setattr(PackageStore, "write_chunk", original)

    restarted = _agent(mosquitto.url, "a1")
    fetcher = BackboneFetcher(restarted, "a1", tmp_path / "cache", defer=lambda received: None, window=8)
    requested = []
    send_request = fetcher._request
    monkeypatch.setattr(fetcher, "_request", lambda digest, first, count: (requested.append((first, count)), send_request(digest, first, count)))
    directory = fetcher.fetch(_spec(package))
    restarted.close()
    assert (directory / "model.safetensors").read_bytes() == (package.directory / "model.safetensors").read_bytes()
    asked = sorted(index for first, count in requested for index in range(first, first + count))
    assert asked == sorted(set(range(package.manifest.chunk_count)) - set(written))  # only what the first run had not verified; no manifest again
    requested.clear()
    assert fetcher.fetch(_spec(package)) == directory and requested == []  # a second run downloads nothing


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_cache_is_fetched_again_not_loaded(mosquitto, server, package, tmp_path, monkeypatch, caplog, damage):
    """Flipped bytes or a truncated file in the cached package: the next fetch (an agent's restart) notices, logs
    it and fetches the damaged file's chunks again, and the package is whole."""
    server.allow("a1", package.digest)
    transport = _agent(mosquitto.url, "a1")
    fetcher = BackboneFetcher(transport, "a1", tmp_path / "cache", defer=lambda received: None, window=8)
    directory = fetcher.fetch(_spec(package))
    weights = directory / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:] if damage == "flip" else original[:5000])
    requested = []
    send_request = fetcher._request
    monkeypatch.setattr(fetcher, "_request", lambda digest, first, count: (requested.append((first, count)), send_request(digest, first, count)))
    with caplog.at_level("WARNING"):
        assert fetcher.fetch(_spec(package)) == directory
    transport.close()
    assert weights.read_bytes() == original
    assert "damaged (model.safetensors)" in caplog.text
    asked = {index for first, count in requested for index in range(first, first + count)}
    assert asked == set(package.manifest.file_chunks(1))  # the weights' chunks, not the config's alone


def test_agents_fetching_at_once_all_finish_and_unassigned_agents_get_nothing(mosquitto, server, package, tmp_path):
    results: dict[str, object] = {}

    def fetch(agent_id: str) -> None:
        transport = _agent(mosquitto.url, agent_id)
        try:
            fetcher = BackboneFetcher(transport, agent_id, tmp_path / agent_id, defer=lambda received: None, window=4, stall_s=1.0, max_stalls=2)
            results[agent_id] = fetcher.fetch(_spec(package))
        except DeliveryError as error:
            results[agent_id] = error
        finally:
            transport.close()

    for agent_id in ("a1", "a2", "a3"):
        server.allow(agent_id, package.digest)
    threads = [threading.Thread(target=fetch, args=(agent_id,)) for agent_id in ("a1", "a2", "a3", "stranger")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for agent_id in ("a1", "a2", "a3"):
        assert (results[agent_id] / "model.safetensors").stat().st_size == 204800
    assert isinstance(results["stranger"], DeliveryError) and "manifest" in str(results["stranger"])
