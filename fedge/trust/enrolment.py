"""The fleet's enrolment: one directory the operator keeps (``fedge enroll``), never a run directory.

    FLEET/enrolment.json                    public: the coordinator's public key; per device its public key, broker
                                            password hash and whether it is revoked
    FLEET/coordinator.credentials.json      secret (mode 0600): the coordinator's signing key and broker login
    FLEET/devices/ID.credentials.json       secret (mode 0600): one device's; copy it to the device, then delete it here

A device signs with its own key and logs in to the broker with its own password, so revoking it (and rewriting the
broker's password and ACL files) shuts it out at both layers.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedge.files import write_file_atomic
from fedge.trust.keys import load_private_key, load_public_key, new_password, new_private_key, password_hash, private_key_text, public_key_text
from fedge.wire import topics

log = logging.getLogger(__name__)

COORDINATOR_ID = "coordinator"  # the sender id of everything the coordinator signs, and its broker user
ENROLMENT_FILE = "enrolment.json"
COORDINATOR_CREDENTIALS = "coordinator.credentials.json"


class EnrolmentError(ValueError):
    """The enrolment directory or a credentials file is missing, malformed or refuses the change."""


@dataclass(frozen=True)
class Credentials:
    """What one party needs to take part: its id and signing key, the coordinator's public key, its broker login."""

    identity: str
    private_key: str = field(repr=False)
    coordinator_key: str
    broker_username: str
    broker_password: str = field(repr=False)

    def signing_key(self) -> Ed25519PrivateKey:
        return load_private_key(self.private_key)

    def coordinator_public_key(self) -> Ed25519PublicKey:
        return load_public_key(self.coordinator_key)

    def save(self, path: Path) -> Path:
        _write_private(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            credentials = cls(**raw)
            credentials.signing_key(), credentials.coordinator_public_key()
        except FileNotFoundError:
            raise EnrolmentError(f"{path}: no such credentials file (made by `fedge enroll`)") from None
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise EnrolmentError(f"{path}: not a fedge credentials file ({error})") from None
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", path)
        return credentials


@dataclass(frozen=True)
class DeviceEntry:
    public_key: str
    password_hash: str
    revoked: bool = False
    enrolled_unix: float = 0.0


@dataclass(frozen=True)
class Enrolment:
    """The public half of a fleet's enrolment, as the coordinator and the broker files use it."""

    coordinator_key: str
    coordinator_password_hash: str
    devices: dict[str, DeviceEntry]

    def is_active(self, identity: str) -> bool:
        """Enrolled and not revoked."""
        entry = self.devices.get(identity)
        return entry is not None and not entry.revoked

    def public_key(self, identity: str) -> Ed25519PublicKey | None:
        """The key of an enrolled, unrevoked device; None for anyone else."""
        return load_public_key(self.devices[identity].public_key) if self.is_active(identity) else None

    def active(self) -> list[str]:
        return sorted(identity for identity, entry in self.devices.items() if not entry.revoked)

    @classmethod
    def load(cls, fleet_dir: str | Path) -> Enrolment:
        path = Path(fleet_dir) / ENROLMENT_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(raw["coordinator_key"], raw["coordinator_password_hash"], {identity: DeviceEntry(**entry) for identity, entry in raw["devices"].items()})
        except FileNotFoundError:
            raise EnrolmentError(f"{path}: no enrolment here; create one with `fedge enroll --fleet {fleet_dir} DEVICE_ID ...`") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise EnrolmentError(f"{path}: malformed enrolment ({error})") from None

    def save(self, fleet_dir: Path) -> None:
        raw = {"coordinator_key": self.coordinator_key, "coordinator_password_hash": self.coordinator_password_hash, "devices": {identity: asdict(entry) for identity, entry in sorted(self.devices.items())}}
        write_file_atomic(fleet_dir / ENROLMENT_FILE, json.dumps(raw, indent=1), mode=0o644)


def coordinator_credentials(fleet_dir: str | Path) -> Credentials:
    return Credentials.load(Path(fleet_dir) / COORDINATOR_CREDENTIALS)


def device_credentials_path(fleet_dir: str | Path, identity: str) -> Path:
    return Path(fleet_dir) / "devices" / f"{identity}.credentials.json"


def enroll(fleet_dir: str | Path, identities: list[str]) -> list[Path]:
    """Give each device a key and a broker password (creating the fleet's coordinator identity on first use);
    returns the credentials files written. A device already enrolled and not revoked is refused."""
    fleet_dir = Path(fleet_dir)
    for identity in identities:
        topics.check_agent_id(identity)
        if identity == COORDINATOR_ID:
            raise EnrolmentError(f"{COORDINATOR_ID!r} is the coordinator's own id")
    enrolment = _load_or_create(fleet_dir)
    taken = [identity for identity in identities if identity in enrolment.devices and not enrolment.devices[identity].revoked]
    if taken:
        raise EnrolmentError(f"already enrolled: {', '.join(taken)} (revoke first to issue new credentials)")
    devices = dict(enrolment.devices)
    written = []
    for identity in identities:
        key, password = new_private_key(), new_password()
        devices[identity] = DeviceEntry(public_key_text(key), password_hash(password), False, round(time.time(), 3))
        written.append(Credentials(identity, private_key_text(key), enrolment.coordinator_key, identity, password).save(device_credentials_path(fleet_dir, identity)))
    Enrolment(enrolment.coordinator_key, enrolment.coordinator_password_hash, devices).save(fleet_dir)
    return written


def revoke(fleet_dir: str | Path, identity: str) -> None:
    """Mark a device revoked: the coordinator refuses it from its next message on, and broker files written after
    this leave it out. Its credentials file, if still here, is deleted."""
    fleet_dir = Path(fleet_dir)
    enrolment = Enrolment.load(fleet_dir)
    entry = enrolment.devices.get(identity)
    if entry is None:
        raise EnrolmentError(f"{identity!r} is not enrolled in {fleet_dir}")
    devices = {**enrolment.devices, identity: DeviceEntry(entry.public_key, entry.password_hash, True, entry.enrolled_unix)}
    Enrolment(enrolment.coordinator_key, enrolment.coordinator_password_hash, devices).save(fleet_dir)
    device_credentials_path(fleet_dir, identity).unlink(missing_ok=True)


@contextmanager
def temporary_fleet(identities: Iterable[str]) -> Iterator[Path]:
    """A throwaway enrolment for a fleet run on one machine (the demo, a trial): in a private temporary directory,
    never a run directory, deleted when the block ends."""
    with tempfile.TemporaryDirectory(prefix="fedge-fleet-") as directory:
        enroll(Path(directory), list(identities))
        yield Path(directory)


def _load_or_create(fleet_dir: Path) -> Enrolment:
    if (fleet_dir / ENROLMENT_FILE).exists():
        return Enrolment.load(fleet_dir)
    fleet_dir.mkdir(parents=True, exist_ok=True)
    key, password = new_private_key(), new_password()
    Credentials(COORDINATOR_ID, private_key_text(key), public_key_text(key), COORDINATOR_ID, password).save(fleet_dir / COORDINATOR_CREDENTIALS)
    enrolment = Enrolment(public_key_text(key), password_hash(password), {})
    enrolment.save(fleet_dir)
    return enrolment


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, text, mode=0o600)


