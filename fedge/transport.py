"""MQTT transport on paho-mqtt 2.x: QoS 1, persistent sessions, reconnect with backoff, Last Will, chunked messages.

Callbacks run on paho's network thread and only queue raw frames with their arrival time (a bounded queue: under a
flood the excess is dropped and counted, never the thread); reassembly, verification and decoding happen on the
owner's thread in ``receive``, through the codec (plain, or signed envelopes). Subscriptions are kept here and renewed on every
(re)connect. Sessions persist across reconnects (MQTT 5 session expiry where the broker speaks 5, else MQTT 3.1.1
``clean_session=False``), so QoS-1 messages published while a client is briefly away reach it when it is back.
Authentication failures are fatal; network failures are retried by paho with backoff.
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fedge.inbox import Inbox
from fedge.broker_config import BrokerConfig, redact_url  # noqa: F401 (re-exported: where callers have always found them)
from fedge.wire import DecodeError, Limits, Message, ProtocolError, Reassembler, split_frames, topics
from fedge.wire.sealing import Codec, PlainCodec

log = logging.getLogger(__name__)


AUTO_PROBE_S = 3.0  # protocol "auto": how long an MQTT 5 CONNECT may go unanswered before trying 3.1.1


class TransportError(RuntimeError):
    """The broker cannot be reached, refused us, or did not acknowledge in time."""


class BrokerAbsent(TransportError):
    """Nothing answers at the broker's address (not started yet, or the wrong address)."""


@dataclass(frozen=True)
class Queued:
    """A message handed to paho: one handle per frame, and the bytes it puts on the wire."""

    handles: list[mqtt.MQTTMessageInfo]
    size: int


def acknowledged(handle: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged a queued frame. paho raises for a frame it could not queue (the connection
    was down, or its queue full): that frame was not acknowledged, and asking must not end a run."""
    try:
        return handle.is_published()
    except (RuntimeError, ValueError):
        return False


@dataclass(frozen=True)
class Received:
    """One whole incoming message (or the protocol error that refused it); ``raw`` for raw subscriptions;
    ``arrived``: when its last frame reached this process (wall clock, stamped on the network thread)."""

    topic: str
    message: Message | None
    error: ProtocolError | None = None
    size: int = 0
    raw: bytes | None = None
    arrived: float = 0.0


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
        codec: Codec | None = None,
        accept: Callable[[str], bool] | None = None,
        max_inbox_frames: int = 10_000,
        latest_only: Callable[[str], bool] | None = None,
        latest_max_wait_s: float = 1.0,
    ):
        """``accept``, when given, is asked on the network thread whether a topic's frames are worth queueing
        (e.g. only enrolled devices' topics); ``latest_only`` whether a topic is telemetry of which only the newest
        frame matters (see ``fedge.inbox.Inbox``), served ahead of waiting data once it waited ``latest_max_wait_s``.
        Both callables must be cheap and thread-safe."""
        self.config = config
        self.limits = limits
        self.codec: Codec = codec or PlainCodec(limits)
        self.client_id = client_id
        self._will = will
        self._birth = birth  # retained, re-published on every (re)connect to undo the Last Will
        self._accept = accept
        self._subscriptions: set[str] = set()
        self._raw_filters: set[str] = set()
        self._lock = threading.Lock()
        # Budgets per device (a device owns several topics), so one device's flood crowds out only itself.
        self._reassembler = Reassembler(limits.max_message_bytes, chunk_timeout_s, sender_of=topics.agent_of)
        self._latest_only = latest_only
        self._inbox = Inbox(max_inbox_frames, latest_max_wait_s, max_bytes=4 * limits.max_message_bytes, max_sender_bytes=limits.max_message_bytes + (1 << 20), sender_of=topics.agent_of)
        self._in_hand: float | None = None  # arrival of the frame the last ``receive`` took, until the next call
        self.dropped_frames = 0  # frames refused on the network thread: inbox full, or a topic not accepted
        self.incomplete_messages = 0  # chunked messages dropped with frames still missing after chunk_timeout_s
        self._connected = threading.Event()
        self._fatal: str | None = None
        self._ever_connected = False  # a disconnect before the first CONNACK means the broker refused the protocol
        self.protocol = "3.1.1" if config.protocol == "3.1.1" else "5"
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        v5 = self.protocol == "5"
        if v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311, clean_session=self.config.session_expiry_s == 0)
        config = self.config
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set(ca_certs=config.ca_certs, certfile=config.certfile, keyfile=config.keyfile, cert_reqs=ssl.CERT_REQUIRED)
        if self._will is not None:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(64)
        client.max_queued_messages_set(0)  # unbounded: a publish never drops silently
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_socket_open = _without_nagle
        return client

    # --- paho callbacks (network thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if reason_code in ("Bad user name or password", "Not authorized", "Bad username or password"):
                self._fatal = f"broker refused the connection: {reason_code}"
                client.disconnect()
            elif reason_code in ("Unsupported protocol version", "Unacceptable protocol version"):
                self._fatal = "protocol"
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
        self._ever_connected = True
        log.debug("connected to %s:%s", self.config.host, self.config.port)

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._ever_connected and self._fatal is None:  # later, during an outage, paho keeps retrying
            self._fatal = f"nothing answers at {self.config.host}:{self.config.port} (is the broker running, and is that its address?)"

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.protocol == "5" and self.config.protocol == "auto" and self._fatal is None and not self._connected.is_set() and not self._ever_connected:
            self._fatal = "protocol"  # the broker hung up on an MQTT 5 CONNECT without answering it: try 3.1.1 now
        self._connected.clear()
        if reason_code.is_failure:
            log.warning("lost the broker (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        if self._accept is not None and not self._accept(msg.topic):
            self.dropped_frames += 1
            return
        if not self._inbox.put(msg.topic, msg.payload, self._latest_only is not None and self._latest_only(msg.topic)):
            self.dropped_frames += 1

    # --- owner thread ---
    def connect(self, timeout_s: float = 15.0) -> None:
        """Connect (MQTT 5 with a fresh session that then persists; with ``protocol: auto`` falling back to
        MQTT 3.1.1 when the broker does not speak 5); raises ``TransportError``."""
        auto = self.config.protocol == "auto"
        started = time.monotonic()
        # A broker that cannot parse an MQTT 5 CONNECT may say so (amqtt does without properties) or stay silent.
        connected = self._start(min(timeout_s, AUTO_PROBE_S) if auto else timeout_s)
        if auto and not connected and self._fatal in (None, "protocol"):
            log.info("%s:%s does not answer MQTT 5; using 3.1.1 with a persistent session", self.config.host, self.config.port)
            self.protocol, self._fatal = "3.1.1", None
            self._client = self._make_client()
            connected = self._start(max(timeout_s - (time.monotonic() - started), 1.0))
        if self._fatal:
            self._client.loop_stop()
            if self._fatal.startswith("nothing answers"):
                raise BrokerAbsent(self._fatal)
            raise TransportError("the broker refuses MQTT 5 (set protocol 3.1.1)" if self._fatal == "protocol" else self._fatal)
        if not connected:
            raise TransportError(f"no connection to {self.config.host}:{self.config.port} in {timeout_s:.0f} s")

    def _start(self, timeout_s: float) -> bool:
        """Start connecting; whether a connection was accepted within ``timeout_s``."""
        try:
            if self.protocol == "5":
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self.config.session_expiry_s
                self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties)
            else:
                self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        except (OSError, ValueError) as error:
            raise TransportError(f"cannot reach {self.config.host}:{self.config.port}: {error}") from error
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._connected.wait(0.05) and not self._fatal and time.monotonic() < deadline:
            pass
        if self._connected.is_set() and not self._fatal:
            return True
        self._client.disconnect()
        self._client.loop_stop()
        return False

    @property
    def waiting_frames(self) -> int:
        """Frames received and not yet read by ``receive``."""
        return len(self._inbox)

    def unread_since(self) -> float | None:
        """When the oldest frame not yet handled arrived: one still waiting, or the one the last ``receive`` took
        (its caller is handling it until it calls again). None when everything that arrived has been handled; a
        sender's silence can only be judged up to this time."""
        waiting, in_hand = self._inbox.oldest(), self._in_hand
        return min((stamp for stamp in (waiting, in_hand) if stamp is not None), default=None)

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
        return self.publish_frames(topic, split_frames(self.codec.seal(topic, message, tensor_dtype), self.config.max_frame_bytes), timeout_s)

    def enqueue(self, topic: str, message: Message, tensor_dtype: str = "float16", stream: str = "main", qos: int = 1) -> Queued:
        """Queue a message for sending without waiting for acknowledgements (paho sends it, and again after a
        reconnect, as its in-flight window allows). ``stream`` names the sealing counter of the calling thread when
        it is not the owner's; ``qos`` 0 suits telemetry that is stale once missed (heartbeats)."""
        return self.enqueue_frames(topic, list(split_frames(self.codec.seal(topic, message, tensor_dtype, stream), self.config.max_frame_bytes)), qos)

    def seal_shared(self, message: Message, tensor_dtype: str = "float16") -> tuple[list[bytes], str]:
        """A message sealed once for every receiver that shares it (``fedge.wire.envelope``), cut into frames, and
        the digest that names it; send it with ``enqueue_frames`` to each."""
        sealed, digest = self.codec.seal_shared(message, tensor_dtype)
        return list(split_frames(sealed, self.config.max_frame_bytes)), digest

    def enqueue_encoded(self, topic: str, encoded: bytes) -> Queued:
        """Queue a message encoded once for several topics (``encode_message``), sealed here for this one."""
        return self.enqueue_frames(topic, list(split_frames(self.codec.seal_encoded(topic, encoded), self.config.max_frame_bytes)))

    def enqueue_frames(self, topic: str, frames: list[bytes], qos: int = 1) -> Queued:
        """Queue frames already sealed and cut, as ``enqueue`` does."""
        return Queued([self._client.publish(topic, frame, qos=qos) for frame in frames], sum(map(len, frames)))

    def wait_sent(self, queued: Iterable[Queued], timeout_s: float) -> int:
        """Wait, ``timeout_s`` at most in all, until the broker acknowledged every queued message; returns how
        many frames it did not."""
        deadline = time.monotonic() + timeout_s
        missing = 0
        for handle in (handle for item in queued for handle in item.handles):
            try:
                handle.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            except (RuntimeError, ValueError):
                pass  # dropped with the connection or refused: counted below
            missing += not acknowledged(handle)
        return missing

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
                    delivered = info.is_published()
                except ValueError as error:
                    raise TransportError(f"publish to {topic} refused: {error}") from error
                except RuntimeError:  # the connection dropped under this frame: send it again
                    delivered = False
                if not delivered:
                    if time.monotonic() >= deadline:
                        raise TransportError(f"broker did not acknowledge {topic} within {timeout_s:.0f} s")
                    pending.append(frame)
            if not pending:
                return size

    def receive(self, timeout_s: float | None = None) -> Received | None:
        """The next whole message (or the protocol error that refused one), or None after ``timeout_s``."""
        for dropped in self._reassembler.expire():
            self.incomplete_messages += 1
            log.warning("dropped incomplete message %s", dropped)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._in_hand = None
        while True:
            frame = self._inbox.get(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            if frame is None:
                return None
            topic, payload, arrived = frame
            self._in_hand = arrived
            if self._raw_filters and any(mqtt.topic_matches_sub(raw, topic) for raw in self._raw_filters):
                return Received(topic, None, size=len(payload), raw=bytes(payload), arrived=arrived)
            try:
                whole = self._reassembler.feed(payload, topic)
                if whole is None:
                    self._in_hand = None
                    continue
                return Received(topic, self.codec.open(topic, whole), size=len(whole), arrived=arrived)
            except ProtocolError as error:
                return Received(topic, None, error, size=len(payload), arrived=arrived)
            except Exception as error:  # a bug the fuzzing missed must cost one message, never the receiving loop
                log.exception("could not read a message on %s", topic)
                return Received(topic, None, DecodeError(f"unreadable ({type(error).__name__})"), size=len(payload), arrived=arrived)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def check_broker(config: BrokerConfig, timeout_s: float = 10.0) -> BrokerConfig:
    """Connect once and leave, before a long start-up: ``TransportError`` at once for a broker that is not there or
    refuses the login, instead of after the heavy imports. Returns ``config`` with the protocol the broker spoke,
    so the real connection does not probe again."""
    probe = MqttTransport(replace(config, session_expiry_s=0), client_id=f"fedge-check-{secrets.token_hex(4)}")  # leaves no session behind
    try:
        probe.connect(timeout_s)
    finally:
        probe.close()
    return replace(config, protocol=probe.protocol)
