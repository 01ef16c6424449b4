"""The embedded pure-Python MQTT broker (amqtt), run on its own asyncio loop in a background thread.

Given the fleet's enrolment it admits only the coordinator and enrolled devices (password logins, checked against
the hashes ``fedge enroll`` keeps) and holds each to its topics (amqtt's topic ACL plugin, with the rules of
``fedge.trust.broker_files``); without one it is open to anyone, for an insecure run on a trusted machine.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass, field

from amqtt.plugins.base import BaseAuthPlugin

from fedge.trust.broker_files import broker_users, topic_rules
from fedge.trust.enrolment import Enrolment
from fedge.trust.keys import password_matches

log = logging.getLogger(__name__)


class EnrolledPasswords(BaseAuthPlugin):
    """amqtt authentication against the enrolment's password hashes (Mosquitto's ``$7$`` format, so one enrolment
    serves both brokers); anonymous clients are refused."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)

    async def authenticate(self, *, session) -> bool:
        hashed = self.config.users.get(session.username or "")
        return hashed is not None and password_matches(session.password or "", hashed)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class EmbeddedBroker:
    """``with EmbeddedBroker(port=...) as broker:`` serves MQTT 3.1.1 on ``broker.url`` until the block ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, enrolment: Enrolment | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.enrolment = enrolment
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Where clients connect; it names MQTT 3.1.1, the only version amqtt speaks, so nobody tries 5 first."""
        return f"mqtt://{self.host}:{self.port}?protocol=3.1.1"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error:
            raise RuntimeError(f"embedded broker did not start on {self.host}:{self.port}: {self._error}")
        log.info("embedded amqtt broker on %s", self.url)
        return self

    def _serve(self) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}, "plugins": self._plugins()}

        async def boot() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        try:
            self._loop.run_until_complete(boot())
        except BaseException as error:  # reported to start(), which raises
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def _plugins(self) -> dict:
        if self.enrolment is None:
            return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        rules = topic_rules(self.enrolment)
        return {
            f"{__name__}.EnrolledPasswords": {"users": broker_users(self.enrolment)},
            "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                "publish_acl": {user: list(rule.publish) for user, rule in rules.items()},
                "acl": {user: list(rule.subscribe) for user, rule in rules.items()},  # amqtt 0.12's name for subscribe rules
            },
        }

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            future.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(timeout=10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
