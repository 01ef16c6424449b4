"""The MQTT transport against real brokers: chunking under a 1 MB limit, Last Will, broker restarts."""

import subprocess
import sys
import time

import numpy as np
import pytest

from fedge.transport import BrokerConfig, MqttTransport, TransportError
from fedge.wire import AdapterUpdate, topics

pytestmark = pytest.mark.broker


def _update(size: int) -> AdapterUpdate:
    tensors = {"w": np.random.default_rng(0).normal(size=size).astype(np.float32)}
    return AdapterUpdate("run", 1, "a", 10, {"loss": 1.0}, tensors)


def _pair(url: str, topic: str, **kwargs):
    config = BrokerConfig.from_url(url, **kwargs)
    receiver = MqttTransport(config, "receiver")
    receiver.subscribe(topic)
    receiver.connect()
    sender = MqttTransport(config, "sender")
    sender.connect()
    return sender, receiver


def test_large_update_is_chunked_under_a_1mb_broker_limit(mosquitto_1mb):
    sender, receiver = _pair(mosquitto_1mb.url, "t/up")
    try:
        update = _update(1_500_000)  # 3 MB as fp16
        sent = sender.publish("t/up", update)
        assert sent > 2 * 1024 * 1024
        received = receiver.receive(timeout_s=20)
        assert received is not None and received.error is None
        np.testing.assert_allclose(received.message.tensors["w"], update.tensors["w"].astype(np.float16))
    finally:
        sender.close()
        receiver.close()


def test_any_broker_carries_messages_both_ways(any_broker):
    sender, receiver = _pair(any_broker.url, "t/+")
    try:
        sender.publish("t/x", _update(100_000), tensor_dtype="float32")
        received = receiver.receive(timeout_s=20)
        assert received.topic == "t/x"
        np.testing.assert_array_equal(received.message.tensors["w"], _update(100_000).tensors["w"])
    finally:
        sender.close()
        receiver.close()


def test_last_will_marks_a_crashed_agent_offline(mosquitto):
    watcher = MqttTransport(BrokerConfig.from_url(mosquitto.url), "watcher")
    watcher.subscribe(topics.status("crashy"), raw=True)
    watcher.connect()
    script = (
        "import os, time\n"
        "from fedge.transport import BrokerConfig, MqttTransport\n"
        "from fedge.wire import topics\n"
        f"t = MqttTransport(BrokerConfig.from_url('{mosquitto.url}', keepalive_s=1), 'crashy', will=(topics.status('crashy'), b'offline'))\n"
        "t.connect(); t.publish_raw(topics.status('crashy'), b'online', retain=True); os._exit(1)\n"
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=False, timeout=30)
        states = []
        deadline = time.time() + 15
        while time.time() < deadline and b"offline" not in states:
            received = watcher.receive(timeout_s=1)
            if received is not None:
                states.append(received.raw)
        assert b"offline" in states
    finally:
        watcher.close()


def test_transport_reconnects_and_resubscribes_after_the_broker_restarts(tmp_path):
    from tests.conftest import MOSQUITTO, Mosquitto

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    broker = Mosquitto(tmp_path).start()
    try:
        sender, receiver = _pair(broker.url, "t/up")
        broker.restart()
        deadline = time.time() + 30
        while not (sender.connected and receiver.connected) and time.time() < deadline:
            time.sleep(0.2)
        assert sender.connected and receiver.connected
        time.sleep(0.5)  # let the re-subscription land
        sender.publish("t/up", _update(10))
        received = receiver.receive(timeout_s=10)
        assert received is not None and received.message.round == 1
        sender.close()
        receiver.close()
    finally:
        broker.stop()


def test_connecting_to_nothing_is_a_clear_error():
    from fedge.broker import free_port

    port = free_port()
    transport = MqttTransport(BrokerConfig(port=port), "lonely")
    with pytest.raises(TransportError, match=f"nothing answers at 127.0.0.1:{port} \\(is the broker running"):
        transport.connect(timeout_s=60)  # a refused connection is an answer: no waiting out the timeout
