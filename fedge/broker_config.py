"""Where the MQTT broker is and how to log in to it, from ``mqtt://`` or ``mqtts://`` URLs (``fedge.transport``
connects with it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

from fedge.wire.chunks import DEFAULT_MAX_FRAME_BYTES

PROTOCOLS = ("auto", "5", "3.1.1")


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker is and how to authenticate; built from ``mqtt://`` or ``mqtts://`` URLs."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive_s: int = 30
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    protocol: str = "auto"  # "5", "3.1.1", or "auto": MQTT 5 unless the broker refuses it
    session_expiry_s: int = 3600  # how long the broker keeps a session (and its queued messages) after a drop; 0: none (MQTT 3.1.1: a clean session)

    @classmethod
    def from_url(cls, url: str, **overrides) -> BrokerConfig:
        """``mqtt[s]://[user[:password]@]host[:port][?protocol=5|3.1.1|auto]``."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt or mqtts")
        query = parse_qs(parsed.query)
        if set(query) - {"protocol"} or query.get("protocol", ["auto"])[0] not in PROTOCOLS:
            raise ValueError(f"broker URL {url!r}: the only option is protocol, one of {', '.join(PROTOCOLS)}")
        tls = parsed.scheme == "mqtts"
        fields = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or (8883 if tls else 1883),
            "username": unquote(parsed.username) if parsed.username else None,
            "password": unquote(parsed.password) if parsed.password else None,
            "tls": tls,
            "protocol": query.get("protocol", ["auto"])[0],
        }
        return cls(**{**fields, **overrides})


def redact_url(url: str) -> str:
    """A broker URL with any password removed."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()
