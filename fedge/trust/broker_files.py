"""Broker-level least privilege from the enrolment: who may log in, and which topics each user may use.

A device may publish only on its own uplink, heartbeat, status and fetch topics and read only its own downlink; the
coordinator reads every uplink, heartbeat, status and fetch topic and writes every downlink. The same rules drive the
embedded broker and the Mosquitto files written for production.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedge.files import write_file_atomic
from fedge.trust.enrolment import COORDINATOR_ID, Enrolment
from fedge.wire.topics import DEFAULT_ROOT


@dataclass(frozen=True)
class TopicRules:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def device_rules(identity: str, root: str = DEFAULT_ROOT) -> TopicRules:
    agent = f"{root}/agents/{identity}"
    return TopicRules((f"{agent}/up", f"{agent}/beat", f"{agent}/status", f"{agent}/fetch"), (f"{agent}/down",))


def coordinator_rules(root: str = DEFAULT_ROOT) -> TopicRules:
    agents = f"{root}/agents/+"
    return TopicRules((f"{agents}/down",), (f"{agents}/up", f"{agents}/beat", f"{agents}/status", f"{agents}/fetch"))


def broker_users(enrolment: Enrolment) -> dict[str, str]:
    """User name -> password hash for everyone who may log in: the coordinator and every unrevoked device."""
    return {COORDINATOR_ID: enrolment.coordinator_password_hash} | {identity: enrolment.devices[identity].password_hash for identity in enrolment.active()}


def topic_rules(enrolment: Enrolment, root: str = DEFAULT_ROOT, site: str | None = None) -> dict[str, TopicRules]:
    """Every user's rules; with ``site`` (a site's identity in the central fleet), the coordinator here is that
    site's aggregator and may also use the site's own topics, which the bridge carries."""
    rules = coordinator_rules(root)
    if site is not None:
        upstream = device_rules(site, root)
        rules = TopicRules(rules.publish + upstream.publish, rules.subscribe + upstream.subscribe)
    return {COORDINATOR_ID: rules} | {identity: device_rules(identity, root) for identity in enrolment.active()}


@dataclass(frozen=True)
class Bridge:
    """A site broker's link to the central broker: it logs in there as the site's identity and carries only that
    identity's topics (up, heartbeat, status and fetch out; down in), so the central link carries one update per
    site per round whatever the site's fleet."""

    identity: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    tls: bool = False
    ca_certs: str | None = None

    def lines(self, root: str = DEFAULT_ROOT) -> list[str]:
        agent = f"{root}/agents/{self.identity}"
        lines = [
            f"connection fedge-{self.identity}", f"address {self.host}:{self.port}", f"remote_clientid fedge-bridge-{self.identity}",
            f"remote_username {self.username}", f"remote_password {self.password}", "cleansession false", "bridge_protocol_version mqttv311",
            "try_private false", "restart_timeout 2 30",
            f"topic {agent}/up out 1", f"topic {agent}/beat out 0", f"topic {agent}/status out 1", f"topic {agent}/fetch out 1", f"topic {agent}/down in 1",
        ]
        if self.tls:
            lines.append(f"bridge_cafile {self.ca_certs}" if self.ca_certs else "bridge_capath /etc/ssl/certs")
        return lines


def write_mosquitto_files(enrolment: Enrolment, out_dir: Path, root: str = DEFAULT_ROOT, port: int = 8883, tls_host: str | None = None, bridge: Bridge | None = None) -> list[Path]:
    """``passwords``, ``acl`` and a ``mosquitto.conf`` that uses them (with a TLS listener when ``tls_host`` names
    the broker's host, for which a CA and server certificate are generated here unless already present; with a
    ``bridge`` to the central broker, the conf holds its password and is written 0600)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    passwords = out_dir / "passwords"
    write_file_atomic(passwords, "".join(f"{user}:{hashed}\n" for user, hashed in broker_users(enrolment).items()), mode=0o600)
    acl = out_dir / "acl"
    lines = []
    for user, rules in topic_rules(enrolment, root, bridge.identity if bridge else None).items():
        lines += [f"user {user}"] + [f"topic write {topic}" for topic in rules.publish] + [f"topic read {topic}" for topic in rules.subscribe] + [""]
    write_file_atomic(acl, "\n".join(lines), mode=0o644)
    conf = [
        f"listener {port}", "allow_anonymous false", f"password_file {passwords.resolve()}", f"acl_file {acl.resolve()}", "max_packet_size 1048576", "persistence false",
        "set_tcp_nodelay true",  # a chunked message's last frame must not wait out the delayed ACK
        f"max_queued_messages {max(1000, 2 * len(enrolment.active()))}",  # the coordinator's queue takes one update per device at once
    ]
    written = [passwords, acl]
    if tls_host is not None:
        written += write_tls_files(out_dir, tls_host)
        conf += [f"cafile {(out_dir / 'ca.crt').resolve()}", f"certfile {(out_dir / 'server.crt').resolve()}", f"keyfile {(out_dir / 'server.key').resolve()}", "tls_version tlsv1.2"]
    if bridge is not None:
        conf += ["", *bridge.lines(root)]
    config = out_dir / "mosquitto.conf"
    write_file_atomic(config, "\n".join(conf) + "\n", mode=0o600 if bridge else 0o644)
    return written + [config]


def write_tls_files(out_dir: Path, host: str, days: int = 825) -> list[Path]:
    """A private CA (``ca.crt``: give it to every device as ``--ca-certs``) and a server certificate for ``host``
    signed by it; kept when already there, so devices need the CA only once."""
    files = [out_dir / "ca.crt", out_dir / "server.crt", out_dir / "server.key"]
    if all(path.exists() for path in files):
        return files
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge fleet CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt_name = x509.DNSName(host)
    server = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(ca_name)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_file_atomic(files[0], ca.public_bytes(pem).decode(), mode=0o644)
    write_file_atomic(files[1], server.public_bytes(pem).decode(), mode=0o644)
    write_file_atomic(files[2], server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(), mode=0o600)
    return files
