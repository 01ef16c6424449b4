"""Shared fixtures: real MQTT brokers on free loopback ports, and a tiny random-weight Llama backbone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fedge.broker import EmbeddedBroker, free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


class Mosquitto:
    """A Mosquitto process with its own config; ``restart()`` brings it back on the same port."""

    def __init__(self, directory: Path, message_size_limit: int = 0):
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_queued_messages 100000\nmessage_size_limit {message_size_limit}\nset_tcp_nodelay true\n"
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


@pytest.fixture
def mosquitto(tmp_path):
    """Mosquitto where installed (CI installs it), else the embedded amqtt broker."""
    if MOSQUITTO is None:
        with EmbeddedBroker() as broker:
            yield broker
        return
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_1mb(tmp_path):
    """Mosquitto refusing messages over 1 MB, as many production brokers do."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    broker = Mosquitto(tmp_path, message_size_limit=1024 * 1024).start()
    yield broker
    broker.stop()


@pytest.fixture
def amqtt_broker():
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def any_broker(request, tmp_path):
    """Each broker in turn: the key integration tests run against both."""
    if request.param == "amqtt":
        with EmbeddedBroker() as broker:
            yield broker
        return
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 4-layer random-weight Llama with a word-level tokenizer: fast plumbing tests, never learning claims."""
    from tests.tiny_model import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone"))
