"""A device's cache of backbone packages, keyed by digest, with resumable partial downloads.

    <root>/<digest>/                  a complete, verified package (``.verified`` inside: each file's size, mtime
                                      and inode when its sha256 last matched)
    <root>/<digest>.partial/          files being filled, manifest.json, and ``.have`` (one byte per chunk)
    <root>/<digest>.lock              held while a process fills the partial directory

Every chunk is checked against the manifest before it is written, and its ``.have`` byte is set only after the
write, so a download cut at any point (dropped link, killed agent) resumes from the chunks already verified. The
files are checked whole against the manifest before the package is moved into place.

A cached package is checked again before every use (``intact``): every file's size each time, and its sha256
whenever the file changed since it was last verified. A damaged package goes back to being a partial download
with the damaged files' chunks missing (``reopen_damaged``), so only those are fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from fedge.delivery.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

DISK_HEADROOM_BYTES = 64 * 1024 * 1024


class DeliveryError(RuntimeError):
    """A backbone package cannot be fetched, stored or verified."""


class DownloadProgress:
    """Logs a download's progress at every tenth of it, readable in a log file (no terminal control codes)."""

    def __init__(self, label: str, total_bytes: int, have_bytes: int = 0):
        self.label = label
        self.total = max(total_bytes, 1)
        self.done = have_bytes
        self.started = time.monotonic()
        self._resumed_from = have_bytes
        self._next_tenth = int(10 * have_bytes / self.total) + 1

    def add(self, count: int) -> None:
        self.done += count
        tenth = min(10 * self.done // self.total, 10)
        if tenth >= self._next_tenth:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = (self.done - self._resumed_from) / elapsed / 1e6
            log.info("%s: %3d%% (%.1f of %.1f MB, %.1f MB/s)", self.label, 10 * tenth, self.done / 1e6, self.total / 1e6, rate)
            self._next_tenth = tenth + 1


class PackageStore:
    """The packages under ``root``; one instance per digest being fetched."""

    def __init__(self, root: Path, digest: str):
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DeliveryError(f"backbone digest {digest!r} is not a sha256")
        self.root = root
        self.digest = digest
        self.final_dir = root / digest
        self.partial_dir = root / f"{digest}.partial"
        self.manifest: Manifest | None = None
        self._have: bytearray = bytearray()
        self._have_file = self.partial_dir / ".have"

    def complete(self) -> bool:
        """Whether a verified package is in place (whether it is still intact is ``intact``'s to say)."""
        return (self.final_dir / ".verified").exists()

    def intact(self) -> list[str]:
        """The files of the verified package that are damaged (missing, wrong size, or changed since they were last
        verified and failing their sha256); an unreadable manifest damages them all ("manifest.json")."""
        marker = self.final_dir / ".verified"
        try:
            manifest = Manifest.parse((self.final_dir / "manifest.json").read_bytes(), self.digest)
        except (OSError, ManifestError):
            return ["manifest.json"]
        stamps, fresh, damaged = _read_stamps(marker), {}, []
        for entry in manifest.files:
            path = self.final_dir / entry.path
            try:
                stamp = _stamp(path)
            except OSError:
                damaged.append(entry.path)
                continue
            if stamp[0] != entry.size or (stamps.get(entry.path) != stamp and file_sha256(path) != entry.sha256):
                damaged.append(entry.path)
            fresh[entry.path] = stamp
        if not damaged and fresh != stamps:
            _write_stamps(marker, self.digest, fresh)
        return damaged

    def reopen_damaged(self, damaged: list[str]) -> None:
        """Turn a damaged package back into a partial download missing only the damaged files' chunks (all of them
        when the manifest itself is damaged)."""
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        if "manifest.json" in damaged:
            shutil.rmtree(self.final_dir, ignore_errors=True)
            return
        (self.final_dir / ".verified").unlink(missing_ok=True)
        self.final_dir.rename(self.partial_dir)
        manifest = Manifest.parse((self.partial_dir / "manifest.json").read_bytes(), self.digest)
        have = bytearray(b"\x01" * manifest.chunk_count)
        for index, entry in enumerate(manifest.files):
            if entry.path in damaged:
                with (self.partial_dir / entry.path).open("ab") as handle:
                    handle.truncate(entry.size)
                for chunk in manifest.file_chunks(index):
                    have[chunk] = 0
        self._have_file.write_bytes(bytes(have))

    @contextmanager
    def locked(self):
        """Hold the digest's lock: two agents on one disk never fill the same partial directory at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{self.digest}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def resume(self) -> Manifest | None:
        """The manifest of a partial download already on disk (with its verified chunks), or None; the disk must
        have room for the chunks still missing."""
        path = self.partial_dir / "manifest.json"
        if not path.exists():
            return None
        try:
            manifest = Manifest.parse(path.read_bytes(), self.digest)
        except ManifestError as error:
            log.warning("discarding partial download %s: %s", self.partial_dir, error)
            shutil.rmtree(self.partial_dir, ignore_errors=True)
            return None
        self._open(manifest)
        self.check_disk(manifest.total_bytes - self.have_bytes())
        return manifest

    def start(self, manifest_bytes: bytes) -> Manifest:
        """Begin a download from a manifest (checked against the digest) once the disk has room for it."""
        manifest = Manifest.parse(manifest_bytes, self.digest)
        self.check_disk(manifest.total_bytes)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        for entry in manifest.files:
            with (self.partial_dir / entry.path).open("ab") as handle:
                handle.truncate(entry.size)
        self._have_file.write_bytes(bytes(manifest.chunk_count))
        (self.partial_dir / "manifest.json").write_bytes(manifest_bytes)
        self._open(manifest)
        return manifest

    def check_disk(self, needed_bytes: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes + DISK_HEADROOM_BYTES:
            raise DeliveryError(f"the backbone needs {needed_bytes / 1e9:.2f} GB on disk; {free / 1e9:.2f} GB is free under {self.root}")

    def _open(self, manifest: Manifest) -> None:
        self.manifest = manifest
        have = self._have_file.read_bytes() if self._have_file.exists() else b""
        self._have = bytearray(have) if len(have) == manifest.chunk_count else bytearray(manifest.chunk_count)

    def missing(self) -> list[int]:
        return [index for index, flag in enumerate(self._have) if not flag]

    def have_bytes(self) -> int:
        assert self.manifest is not None
        return sum(self.manifest.chunk_size(index) for index, flag in enumerate(self._have) if flag)

    def write_chunk(self, index: int, data: bytes) -> bool:
        """Store chunk ``index`` if it matches the manifest; False (and nothing written) if it does not."""
        manifest = self.manifest
        if manifest is None or not 0 <= index < manifest.chunk_count:
            return False
        if len(data) != manifest.chunk_size(index) or hashlib.sha256(data).hexdigest() != manifest.chunks[index]:
            return False
        if self._have[index]:
            return True
        position = 0
        for file_index, offset, length in manifest.spans(index):
            fd = os.open(self.partial_dir / manifest.files[file_index].path, os.O_WRONLY)
            try:
                os.pwrite(fd, data[position : position + length], offset)
            finally:
                os.close(fd)
            position += length
        self._have[index] = 1
        fd = os.open(self._have_file, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\x01", index)
        finally:
            os.close(fd)
        return True

    def finish(self) -> Path:
        """Check every file whole, then move the package into place; a file that fails is fetched again."""
        manifest = self.manifest
        assert manifest is not None and not self.missing()
        for file_index, entry in enumerate(manifest.files):
            if file_sha256(self.partial_dir / entry.path) != entry.sha256:
                for index in manifest.file_chunks(file_index):
                    self._have[index] = 0
                self._have_file.write_bytes(bytes(self._have))
                raise DeliveryError(f"{entry.path} fails its sha256 after download; its chunks will be fetched again")
        (self.partial_dir / ".have").unlink()
        _write_stamps(self.partial_dir / ".verified", self.digest, {entry.path: _stamp(self.partial_dir / entry.path) for entry in manifest.files})
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        self.partial_dir.rename(self.final_dir)
        return self.final_dir


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    """What changes when a file is written, truncated or replaced: its size, mtime (ns) and inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _read_stamps(marker: Path) -> dict[str, list[int]]:
    try:
        return json.loads(marker.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}  # an older marker, or none: every file is hashed again


def _write_stamps(marker: Path, digest: str, stamps: dict[str, list[int]]) -> None:
    marker.write_text(json.dumps({"digest": digest, "files": stamps}))
