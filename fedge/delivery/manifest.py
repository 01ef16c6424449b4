"""The manifest of a backbone package: its files, their hashes, and the hash of every chunk of the byte stream.

The stream is the package's files concatenated in manifest order; chunk ``i`` covers stream bytes
``[i * chunk_bytes, (i + 1) * chunk_bytes)``. The manifest's canonical JSON is what the digest names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

FORMAT = "fedge-backbone/1"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # ~250,000 chunks: a 100 GB package at 400 KB chunks
MAX_FILES = 256
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # plain names: no directories, no '..', no hidden files
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest that does not match its digest or is not a valid package description."""


@dataclass(frozen=True)
class PackageFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    quantization: str
    chunk_bytes: int
    files: tuple[PackageFile, ...]
    chunks: tuple[str, ...]  # sha256 of each chunk of the stream

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def chunk_size(self, index: int) -> int:
        return min(self.chunk_bytes, self.total_bytes - index * self.chunk_bytes)

    def spans(self, index: int) -> list[tuple[int, int, int]]:
        """Where chunk ``index`` lies: (file index, offset in the file, length) for each file it touches."""
        start, end = index * self.chunk_bytes, index * self.chunk_bytes + self.chunk_size(index)
        out, file_start = [], 0
        for position, entry in enumerate(self.files):
            file_end = file_start + entry.size
            low, high = max(start, file_start), min(end, file_end)
            if low < high:
                out.append((position, low - file_start, high - low))
            file_start = file_end
        return out

    def file_chunks(self, file_index: int) -> range:
        """The chunks that hold any of file ``file_index`` (an empty file: the chunk at its position)."""
        start = sum(entry.size for entry in self.files[:file_index])
        end = max(start + self.files[file_index].size - 1, start)
        return range(start // self.chunk_bytes, min(end // self.chunk_bytes, self.chunk_count - 1) + 1)

    def to_bytes(self) -> bytes:
        body = {
            "format": FORMAT,
            "name": self.name,
            "quantization": self.quantization,
            "chunk_bytes": self.chunk_bytes,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "chunks": list(self.chunks),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @cached_property
    def digest(self) -> str:
        """The sha256 of the canonical manifest, computed once (every assignment names it)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def parse(cls, data: bytes, digest: str) -> Manifest:
        """The manifest in ``data``, checked against ``digest`` before a byte of it is parsed."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ManifestError("manifest does not match the digest the assignment names")
        try:
            raw = json.loads(data)
            manifest = cls._from_dict(raw)
        except (ValueError, KeyError, TypeError) as error:
            raise ManifestError(f"manifest is not a valid package description: {error}") from None
        if manifest.to_bytes() != data:
            raise ManifestError("manifest is not in canonical form")
        return manifest

    @classmethod
    def _from_dict(cls, raw: dict) -> Manifest:
        if raw.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT}")
        chunk_bytes = raw["chunk_bytes"]
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be an integer >= 1024")
        files = tuple(PackageFile(f["path"], f["size"], f["sha256"]) for f in raw["files"])
        if not 0 < len(files) <= MAX_FILES or len({f.path for f in files}) != len(files):
            raise ValueError(f"1 to {MAX_FILES} distinct files expected")
        for entry in files:
            if not (isinstance(entry.path, str) and _FILE_NAME.match(entry.path)):
                raise ValueError(f"file name {entry.path!r} is not a plain file name")
            if not isinstance(entry.size, int) or entry.size < 0 or not _HEX64.match(str(entry.sha256)):
                raise ValueError(f"file {entry.path}: bad size or sha256")
        chunks = tuple(raw["chunks"])
        total = sum(f.size for f in files)
        if len(chunks) != -(-total // chunk_bytes) or not all(isinstance(c, str) and _HEX64.match(c) for c in chunks):
            raise ValueError("chunk hashes do not cover the files")
        return cls(str(raw["name"]), str(raw["quantization"]), chunk_bytes, files, chunks)


def build_manifest(directory: Path, name: str, quantization: str, chunk_bytes: int) -> Manifest:
    """Describe every file of ``directory`` (sorted by name), hashing files and chunks in one pass."""
    paths = sorted(p for p in directory.iterdir() if p.is_file() and _FILE_NAME.match(p.name))
    files, chunks = [], []
    pending = bytearray()
    for path in paths:
        file_hash = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_hash.update(block)
                pending += block
                while len(pending) >= chunk_bytes:
                    chunks.append(hashlib.sha256(pending[:chunk_bytes]).hexdigest())
                    del pending[:chunk_bytes]
        files.append(PackageFile(path.name, path.stat().st_size, file_hash.hexdigest()))
    if pending:
        chunks.append(hashlib.sha256(pending).hexdigest())
    return Manifest(name, quantization, chunk_bytes, tuple(files), tuple(chunks))


def read_chunk(directory: Path, manifest: Manifest, index: int) -> bytes:
    """Chunk ``index`` of the package in ``directory``."""
    if not 0 <= index < manifest.chunk_count:
        raise IndexError(f"chunk {index} out of range (0..{manifest.chunk_count - 1})")
    parts = []
    for position, offset, length in manifest.spans(index):
        with (directory / manifest.files[position].path).open("rb") as handle:
            handle.seek(offset)
            parts.append(handle.read(length))
    return b"".join(parts)
