"""Broker-level least privilege: only enrolled logins, each device on its own topics; Mosquitto from the files
`fedge enroll` writes (with TLS), and the embedded broker from the enrolment itself."""

import os
import subprocess
import time

import pytest

from fedge.broker import EmbeddedBroker, free_port
from fedge.transport import BrokerConfig, MqttTransport, TransportError
from fedge.trust.broker_files import write_mosquitto_files
from fedge.trust.enrolment import Enrolment, coordinator_credentials, revoke
from fedge.task.data import write_jsonl
from fedge.wire import Heartbeat, topics
from tests.conftest import MOSQUITTO, _wait_for_port
from tests.integration.helpers import credentials, enrolled_fleet, fleet_config, run_fleet, shard

pytestmark = pytest.mark.broker


def _client(url: str, name: str, ca: str | None = None, user: str | None = None, password: str | None = None) -> BrokerConfig:
    return BrokerConfig.from_url(url, ca_certs=ca, username=user, password=password)


def _check_least_privilege(url: str, tmp_path, ca: str | None = None) -> None:
    """Anonymous and wrong-password logins are refused; a device publishes only on its own uplink and reads only
    its own downlink; the coordinator reads every uplink and writes every downlink."""
    fleet = enrolled_fleet(tmp_path)
    a0, boss = credentials(tmp_path, "a0"), coordinator_credentials(fleet)
    for user, password in ((None, None), ("a0", "wrong"), ("a9", "x")):
        with pytest.raises(TransportError, match="refused|no connection"):
            MqttTransport(_client(url, "x", ca, user, password), f"intruder-{user}").connect(timeout_s=5)
    coordinator = MqttTransport(_client(url, "c", ca, boss.broker_username, boss.broker_password), "coordinator")
    coordinator.subscribe(topics.all_uplinks())
    coordinator.connect()
    device = MqttTransport(_client(url, "d", ca, a0.broker_username, a0.broker_password), "device-a0")
    device.subscribe(topics.downlink("a0"))
    device.subscribe(topics.downlink("a1"))  # not its own: the broker must not deliver a1's messages to it
    device.connect()
    device.publish(topics.uplink("a0"), Heartbeat("a0", "idle", 1.0))
    device.enqueue(topics.uplink("a1"), Heartbeat("a1", "idle", 2.0))  # impersonating a1: dropped by the broker
    coordinator.publish(topics.downlink("a1"), Heartbeat("a1", "idle", 3.0))
    coordinator.publish(topics.downlink("a0"), Heartbeat("a0", "idle", 4.0))
    at_coordinator, at_device = _until(coordinator, (topics.uplink("a0"), 1.0)), _until(device, (topics.downlink("a0"), 4.0))
    assert at_coordinator == [(topics.uplink("a0"), 1.0)]
    assert at_device == [(topics.downlink("a0"), 4.0)]
    coordinator.close()
    device.close()


def _until(client: MqttTransport, wanted: tuple[str, float], timeout_s: float = 30.0) -> list[tuple[str, float]]:
    """Everything ``client`` receives until ``wanted`` has arrived (however busy the machine), then for half a
    second more: whatever the broker should have dropped would have come before or with it."""
    seen, deadline = [], time.monotonic() + timeout_s
    while wanted not in seen and time.monotonic() < deadline:
        received = client.receive(0.5)
        if received is not None:
            seen.append((received.topic, received.message.sent_unix))
    return seen + [(r.topic, r.message.sent_unix) for r in iter(lambda: client.receive(0.5), None)]


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
def test_mosquitto_with_the_written_files_enforces_logins_acls_and_tls_and_a_run_completes(tiny_backbone, tmp_path):
    port = free_port()
    files = write_mosquitto_files(Enrolment.load(enrolled_fleet(tmp_path)), tmp_path / "mosquitto", port=port, tls_host="127.0.0.1")
    ca = str(tmp_path / "mosquitto" / "ca.crt")
    if os.geteuid() == 0:  # Mosquitto started as root drops to user "mosquitto", which cannot read our 0600 files
        files[-1].write_text(files[-1].read_text() + "user root\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(files[-1])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        url = f"mqtts://127.0.0.1:{port}"
        with pytest.raises(TransportError):  # TLS is required: plain MQTT to the TLS port gets nowhere
            MqttTransport(_client(f"mqtt://127.0.0.1:{port}", "plain"), "plain").connect(timeout_s=4)
        _check_least_privilege(url, tmp_path, ca)
        write_jsonl(tmp_path / "test.jsonl", shard(5, 16))
        for index in range(2):
            write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
        config = fleet_config(tmp_path, url, tiny_backbone, ca_certs=ca, planner={"max_depth": 2, "ranks": [2]})
        records = run_fleet(tmp_path, config, agents=2, extra_agent_args=["--ca-certs", ca])
        assert records[-1]["contributors"] == ["a0", "a1"]
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def test_the_embedded_broker_admits_only_the_enrolled_fleet_on_its_own_topics(tmp_path):
    with EmbeddedBroker(fleet_dir=enrolled_fleet(tmp_path)) as broker:
        _check_least_privilege(broker.url, tmp_path)


def test_the_embedded_broker_revokes_a_device_while_running(tmp_path):
    """`fedge revoke` while the broker runs: the device's session is closed within moments, it cannot log in
    again, and the others carry on."""
    fleet = enrolled_fleet(tmp_path)
    a0, a1 = credentials(tmp_path, "a0"), credentials(tmp_path, "a1")
    with EmbeddedBroker(fleet_dir=fleet, watch_s=0.2) as broker:
        devices = {}
        for device in (a0, a1):
            devices[device.identity] = MqttTransport(_client(broker.url, device.identity, None, device.broker_username, device.broker_password), f"device-{device.identity}")
            devices[device.identity].connect()
        revoke(fleet, "a0")
        deadline = time.monotonic() + 30
        while devices["a0"].connected and time.monotonic() < deadline:  # waits on the event, not on this machine's speed
            time.sleep(0.1)
        assert not devices["a0"].connected
        with pytest.raises(TransportError, match="refused|no connection"):
            MqttTransport(_client(broker.url, "again", None, a0.broker_username, a0.broker_password), "device-a0-again").connect(timeout_s=5)
        assert devices["a1"].connected
        devices["a1"].publish(topics.uplink("a1"), Heartbeat("a1", "idle", 1.0))
        assert "a0" not in broker.enrolment.active()
        for transport in devices.values():
            transport.close()
