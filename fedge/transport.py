"""MQTT transport on paho-mqtt 2.x: QoS 1, reconnect with backoff, Last Will, chunked messages.

Callbacks run on paho's network thread and only reassemble frames and queue whole messages; decoding,
training and aggregation happen on the owner's thread via ``receive``. Subscriptions are kept here and renewed on
every (re)connect. Authentication failures are fatal; network failures are retried by paho with backoff.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fedge.wire import Limits, Message, ProtocolError, Reassembler, decode_message, encode_message, split_frames
from fedge.wire.chunks import DEFAULT_MAX_FRAME_BYTES

log = logging.getLogger(__name__)


class TransportError(RuntimeError):
    """The broker cannot be reached, refused us, or did not acknowledge in time."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to authenticate; built from ``mqtt://`` or ``mqtts://`` URLs."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive_s: int = 30
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES

    @classmethod
    def from_url(cls, url: str, **overrides) -> BrokerConfig:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt or mqtts")
        tls = parsed.scheme == "mqtts"
        fields = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or (8883 if tls else 1883),
            "username": unquote(parsed.username) if parsed.username else None,
            "password": unquote(parsed.password) if parsed.password else None,
            "tls": tls,
        }
        return cls(**{**fields, **overrides})


@dataclass(frozen=True)
class Received:
    """One whole incoming message (or the protocol error that refused it); ``raw`` for raw subscriptions."""

    topic: str
    message: Message | None
    error: ProtocolError | None = None
    size: int = 0
    raw: bytes | None = None


def _without_nagle(client, userdata, sock) -> None:
    """Send each frame at once: with Nagle's algorithm a message's last partial segment waits for the peer's
    delayed ACK (40 ms on Linux), which doubled the time a chunked update took to cross a local broker."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a test double or a Unix socket)
        log.debug("TCP_NODELAY not set on %r", sock)


class MqttTransport:
    """A connected MQTT client that sends and receives fedge messages."""

    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        will: tuple[str, bytes] | None = None,
        birth: tuple[str, bytes] | None = None,
        limits: Limits = Limits(),
        chunk_timeout_s: float = 60.0,
    ):
        self.config = config
        self.limits = limits
        self._chunk_timeout_s = chunk_timeout_s
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        if config.username:
            self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set(
                ca_certs=config.ca_certs, certfile=config.certfile, keyfile=config.keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._birth = birth  # retained, re-published on every (re)connect to undo the Last Will
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(64)
        self._client.max_queued_messages_set(0)  # unbounded: a publish never drops silently
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = _without_nagle
        self._subscriptions: set[str] = set()
        self._raw_filters: set[str] = set()
        self._lock = threading.Lock()
        self._reassemblers: dict[str, Reassembler] = {}
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._connected = threading.Event()
        self._fatal: str | None = None

    # --- paho callbacks (network thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if reason_code in ("Bad user name or password", "Not authorized"):
                self._fatal = f"broker refused the connection: {reason_code}"
                client.disconnect()
            log.warning("connect failed: %s", reason_code)
            return
        with self._lock:
            topics = sorted(self._subscriptions)
        for topic in topics:
            client.subscribe(topic, qos=1)
        if self._birth is not None:
            client.publish(self._birth[0], self._birth[1], qos=1, retain=True)
        self._connected.set()
        log.debug("connected to %s:%s", self.config.host, self.config.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code.is_failure:
            log.warning("lost the broker (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        if any(mqtt.topic_matches_sub(raw, msg.topic) for raw in self._raw_filters):
            self._inbox.put(Received(msg.topic, None, size=len(msg.payload), raw=bytes(msg.payload)))
            return
        with self._lock:
            reassembler = self._reassemblers.setdefault(
                msg.topic, Reassembler(self.limits.max_message_bytes, self._chunk_timeout_s)
            )
        try:
            whole = reassembler.feed(msg.payload)
        except ProtocolError as error:
            self._inbox.put(Received(msg.topic, None, error))
            return
        if whole is None:
            return
        try:
            self._inbox.put(Received(msg.topic, decode_message(whole, self.limits), size=len(whole)))
        except ProtocolError as error:
            self._inbox.put(Received(msg.topic, None, error, size=len(whole)))

    # --- owner thread ---
    def connect(self, timeout_s: float = 15.0) -> None:
        try:
            self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        except (OSError, ValueError) as error:
            raise TransportError(f"cannot reach {self.config.host}:{self.config.port}: {error}") from error
        self._client.loop_start()
        if not self._connected.wait(timeout_s) or self._fatal:
            self._client.loop_stop()
            raise TransportError(self._fatal or f"no connection to {self.config.host}:{self.config.port} in {timeout_s:.0f} s")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str, raw: bool = False) -> None:
        """Receive ``topic``'s messages decoded, or as plain bytes when ``raw`` (e.g. status topics)."""
        with self._lock:
            self._subscriptions.add(topic)
            if raw:
                self._raw_filters.add(topic)
        if self.connected:
            result, _ = self._client.subscribe(topic, qos=1)
            if result != mqtt.MQTT_ERR_SUCCESS:
                log.warning("subscribe to %s deferred until reconnect (%s)", topic, mqtt.error_string(result))

    def publish(self, topic: str, message: Message, timeout_s: float = 120.0, tensor_dtype: str = "float16") -> int:
        """Send a message (chunked when large), wait for the broker's acks; returns bytes sent."""
        return self.publish_frames(topic, split_frames(encode_message(message, tensor_dtype), self.config.max_frame_bytes), timeout_s)

    def enqueue(self, topic: str, message: Message, tensor_dtype: str = "float16") -> list[mqtt.MQTTMessageInfo]:
        """Queue a message for sending without waiting for acknowledgements; returns one handle per frame."""
        frames = split_frames(encode_message(message, tensor_dtype), self.config.max_frame_bytes)
        return [self._client.publish(topic, frame, qos=1) for frame in frames]

    def publish_raw(self, topic: str, payload: bytes, retain: bool = False, timeout_s: float = 30.0) -> None:
        self.publish_frames(topic, [payload], timeout_s, retain)

    def publish_frames(self, topic: str, frames: Iterable[bytes], timeout_s: float = 120.0, retain: bool = False) -> int:
        """Publish at QoS 1, each frame as soon as it is cut, then wait for every ack, riding out broker outages
        until ``timeout_s``; returns the bytes published.

        Frames not acknowledged when the connection drops are sent again after the reconnect; receivers
        tolerate the duplicates (chunks are keyed by index, updates by agent and round).
        """
        deadline = time.monotonic() + timeout_s
        pending: Iterable[bytes] = frames
        size = 0
        while True:
            if not self._connected.wait(max(deadline - time.monotonic(), 0.0)):
                raise TransportError(f"no broker connection to publish {topic} within {timeout_s:.0f} s")
            infos = [(frame, self._client.publish(topic, frame, qos=1, retain=retain)) for frame in pending]
            size = size or sum(len(frame) for frame, _ in infos)
            pending = []
            for frame, info in infos:
                try:
                    info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
                    acknowledged = info.is_published()
                except ValueError as error:
                    raise TransportError(f"publish to {topic} refused: {error}") from error
                except RuntimeError:  # the connection dropped under this frame: send it again
                    acknowledged = False
                if not acknowledged:
                    if time.monotonic() >= deadline:
                        raise TransportError(f"broker did not acknowledge {topic} within {timeout_s:.0f} s")
                    pending.append(frame)
            if not pending:
                return size

    def receive(self, timeout_s: float | None = None) -> Received | None:
        """The next whole message (or refused one), or None after ``timeout_s``."""
        for topic, reassembler in list(self._reassemblers.items()):
            for dropped in reassembler.expire():
                log.warning("dropped incomplete message on %s: %s", topic, dropped)
        try:
            return self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
