"""The embedded pure-Python MQTT broker (amqtt), run on its own asyncio loop in a background thread.

Given the fleet's directory it admits only the coordinator and enrolled devices (password logins, checked against
the hashes ``fedge enroll`` keeps) and holds each to its topics (amqtt's topic ACL plugin, with the rules of
``fedge.trust.broker_files``); without one it is open to anyone, for an insecure run on a trusted machine.

Revocation is live: the broker watches the enrolment file (every ``watch_s``); when it changes, logins and topic
rules are reloaded, and the sessions of devices no longer enrolled are closed, so a revoked device is cut off at
once and cannot log in again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin

from fedge.trust.broker_files import broker_users, topic_rules
from fedge.trust.enrolment import ENROLMENT_FILE, Enrolment, EnrolmentError
from fedge.trust.keys import password_matches

WATCH_S = 1.0  # how often the enrolment file is checked for changes

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


def _quiet_hangups(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A client that hung up while amqtt was refusing its CONNECT (an MQTT 5 probe: amqtt speaks 3.1.1) leaves amqtt
    closing a dead socket: one debug line, not a traceback. Anything else goes to asyncio's own handler."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno in (errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE):
        log.debug("a client left while the broker answered it: %s", error)
        return
    loop.default_exception_handler(context)


class EmbeddedBroker:
    """``with EmbeddedBroker(port=...) as broker:`` serves MQTT 3.1.1 on ``broker.url`` until the block ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fleet_dir: str | Path | None = None, watch_s: float = WATCH_S):
        """``fleet_dir``: the enrolment (``fedge enroll``) to admit and watch; None for an open broker."""
        self.host = host
        self.port = port or free_port(host)
        self.fleet_dir = Path(fleet_dir) if fleet_dir is not None else None
        self.enrolment = Enrolment.load(self.fleet_dir) if self.fleet_dir is not None else None
        self.watch_s = watch_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stamp = self._enrolment_stamp()
        self._watching: asyncio.Task | None = None

    @property
    def url(self) -> str:
        """Where clients connect; it names MQTT 3.1.1, the only version amqtt speaks, so nobody tries 5 first."""
        return f"mqtt://{self.host}:{self.port}?protocol=3.1.1"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        _check_free(self.host, self.port)
        self._thread = threading.Thread(target=self._serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error:
            raise RuntimeError(f"embedded broker did not start on {self.host}:{self.port}: {self._error}")
        log.info("embedded amqtt broker on %s", self.url)
        return self

    def _serve(self) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_hangups)
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
        if self.fleet_dir is not None:
            self._watching = self._loop.create_task(self._watch())
        self._ready.set()
        self._loop.run_forever()

    def _plugins(self) -> dict:
        if self.enrolment is None:
            return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        publish, subscribe = self._acls(self.enrolment)
        return {
            f"{__name__}.EnrolledPasswords": {"users": broker_users(self.enrolment)},
            "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {"publish_acl": publish, "acl": subscribe},  # amqtt 0.12 calls subscribe rules acl
        }

    @staticmethod
    def _acls(enrolment: Enrolment) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        rules = topic_rules(enrolment)
        return {user: list(rule.publish) for user, rule in rules.items()}, {user: list(rule.subscribe) for user, rule in rules.items()}

    def _enrolment_stamp(self) -> tuple[int, int, int] | None:
        if self.fleet_dir is None:
            return None
        try:
            stat = (self.fleet_dir / ENROLMENT_FILE).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    async def _watch(self) -> None:
        """Reload the enrolment whenever its file changes (on the broker's loop, between its own work)."""
        while True:
            await asyncio.sleep(self.watch_s)
            stamp = self._enrolment_stamp()
            if stamp == self._stamp:
                continue
            try:
                enrolment = Enrolment.load(self.fleet_dir)
            except EnrolmentError as error:  # mid-write or broken: keep the rules in force, try again later
                log.warning("enrolment changed but cannot be read (%s); the broker keeps the rules it has", error)
                continue
            self._stamp = stamp
            await self._apply(enrolment)

    async def _apply(self, enrolment: Enrolment) -> None:
        """New logins and topic rules; the sessions of identities no longer admitted are closed."""
        users = broker_users(enrolment)
        publish, subscribe = self._acls(enrolment)
        for plugin in self._broker.plugins_manager.plugins:
            if isinstance(plugin, EnrolledPasswords):
                plugin.config.users = users
            elif isinstance(plugin, TopicAccessControlListPlugin):
                plugin.context.config.publish_acl, plugin.context.config.acl = publish, subscribe
        cut = [client_id for client_id, (session, _) in list(self._broker._sessions.items()) if session.username not in users]  # amqtt keeps sessions privately
        for client_id in cut:
            await self._broker._cleanup_session(client_id)
        revoked = sorted(set(broker_users(self.enrolment)) - set(users)) if self.enrolment is not None else []
        self.enrolment = enrolment
        log.warning("enrolment reloaded: %d logins%s; %d sessions closed", len(users), f", {', '.join(revoked)} revoked" if revoked else "", len(cut))

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        await self._broker.shutdown()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_free(host: str, port: int) -> None:
    """``RuntimeError`` naming the address when another process listens there (amqtt would log a traceback)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise RuntimeError(f"cannot listen on {host}:{port}: {error.strerror or error} (is another broker running there?)") from None
