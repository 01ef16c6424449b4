"""Backbone packages: manifest integrity, resumable store, URL source (file:// and HTTP with and without Range)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from fedge.delivery import store as store_module
from fedge.delivery import DeliveryError, Manifest, ManifestError, PackageStore, build_manifest, read_chunk
from fedge.delivery.url import fetch_from_url


@pytest.fixture
def package(tmp_path) -> tuple[Path, Manifest]:
    """Three files of awkward sizes, so chunks straddle file boundaries."""
    directory = tmp_path / "package"
    directory.mkdir()
    for name, size in (("a.json", 1000), ("model.safetensors", 9000), ("z.txt", 3)):
        (directory / name).write_bytes(hashlib.sha256(name.encode()).digest() * (size // 32) + b"x" * (size % 32))
    return directory, build_manifest(directory, "tiny", "nf4", 2048)


def test_manifest_round_trips_and_chunks_cover_the_files_end_to_end(package):
    directory, manifest = package
    assert Manifest.parse(manifest.to_bytes(), manifest.digest) == manifest
    stream = b"".join((directory / f.path).read_bytes() for f in manifest.files)
    assert manifest.chunk_count == 5 and b"".join(read_chunk(directory, manifest, i) for i in range(5)) == stream
    assert manifest.spans(0) == [(0, 0, 1000), (1, 0, 1048)]


def test_a_manifest_that_differs_from_the_digest_or_lies_is_refused(package):
    _, manifest = package
    data = manifest.to_bytes()
    with pytest.raises(ManifestError, match="digest"):
        Manifest.parse(data.replace(b"tiny", b"tinx"), manifest.digest)
    evil = data.replace(b'"a.json"', b'"../a.j"')
    with pytest.raises(ManifestError, match="plain file name"):
        Manifest.parse(evil, hashlib.sha256(evil).hexdigest())
    spaced = data.replace(b",", b", ", 1)
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.parse(spaced, hashlib.sha256(spaced).hexdigest())


def test_store_checks_every_chunk_resumes_after_a_kill_and_verifies_the_whole(package, tmp_path):
    directory, manifest = package
    root = tmp_path / "cache"
    store = PackageStore(root, manifest.digest)
    store.start(manifest.to_bytes())
    assert not store.write_chunk(1, b"\0" * 2048)  # wrong bytes are never written
    assert store.write_chunk(0, read_chunk(directory, manifest, 0)) and store.write_chunk(3, read_chunk(directory, manifest, 3))
    resumed = PackageStore(root, manifest.digest)  # a new process after a kill
    assert resumed.resume() == manifest and resumed.missing() == [1, 2, 4]
    for index in resumed.missing():
        resumed.write_chunk(index, read_chunk(directory, manifest, index))
    final = resumed.finish()
    assert PackageStore(root, manifest.digest).complete()
    assert all((final / f.path).read_bytes() == (directory / f.path).read_bytes() for f in manifest.files)


def test_a_file_corrupted_on_disk_is_fetched_again(package, tmp_path):
    directory, manifest = package
    store = PackageStore(tmp_path / "cache", manifest.digest)
    store.start(manifest.to_bytes())
    for index in range(manifest.chunk_count):
        store.write_chunk(index, read_chunk(directory, manifest, index))
    with (store.partial_dir / "model.safetensors").open("r+b") as handle:
        handle.write(b"rot")
    with pytest.raises(DeliveryError, match="model.safetensors fails"):
        store.finish()
    assert store.missing() == [0, 1, 2, 3, 4]  # model.safetensors touches every chunk but none of z.txt's


def _completed(directory: Path, manifest: Manifest, root: Path) -> PackageStore:
    store = PackageStore(root, manifest.digest)
    store.start(manifest.to_bytes())
    for index in range(manifest.chunk_count):
        store.write_chunk(index, read_chunk(directory, manifest, index))
    store.finish()
    return PackageStore(root, manifest.digest)


def test_a_cached_package_is_hashed_again_only_when_a_file_changed(package, tmp_path, monkeypatch):
    directory, manifest = package
    store = _completed(directory, manifest, tmp_path / "cache")
    hashed = []
    real = store_module.file_sha256
    monkeypatch.setattr(store_module, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    assert store.intact() == [] and hashed == []  # sizes only: nothing changed since it was verified
    path = store.final_dir / "a.json"
    data = path.read_bytes()
    path.write_bytes(data)  # rewritten with the same bytes: hashed again, still intact
    assert store.intact() == [] and hashed == ["a.json"]
    assert store.intact() == [] and hashed == ["a.json"]  # and its new stamp kept


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_cache_reopens_with_only_the_damaged_files_missing_and_heals(package, tmp_path, damage):
    directory, manifest = package
    store = _completed(directory, manifest, tmp_path / "cache")
    path = store.final_dir / "z.txt"
    if damage == "flip":
        path.write_bytes(bytes([path.read_bytes()[0] ^ 1]) + path.read_bytes()[1:])
    elif damage == "truncate":
        path.write_bytes(b"")
    else:
        path.unlink()
    assert store.intact() == ["z.txt"]
    store.reopen_damaged(store.intact())
    assert not store.complete()
    healing = PackageStore(tmp_path / "cache", manifest.digest)
    assert healing.resume() == manifest and healing.missing() == [4]  # z.txt's chunk only
    healing.write_chunk(4, read_chunk(directory, manifest, 4))
    final = healing.finish()
    assert (final / "z.txt").read_bytes() == (directory / "z.txt").read_bytes() and PackageStore(tmp_path / "cache", manifest.digest).intact() == []


def test_a_damaged_manifest_discards_the_package(package, tmp_path):
    directory, manifest = package
    store = _completed(directory, manifest, tmp_path / "cache")
    (store.final_dir / "manifest.json").write_bytes(b"{}")
    assert store.intact() == ["manifest.json"]
    store.reopen_damaged(["manifest.json"])
    assert not store.final_dir.exists() and PackageStore(tmp_path / "cache", manifest.digest).resume() is None


def test_store_refuses_a_package_the_disk_cannot_hold(package, tmp_path, monkeypatch):
    _, manifest = package
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DeliveryError, match="GB on disk"):
        PackageStore(tmp_path / "cache", manifest.digest).start(manifest.to_bytes())


def test_a_resumed_download_needs_room_for_what_is_still_missing(package, tmp_path, monkeypatch):
    directory, manifest = package
    import shutil

    store = PackageStore(tmp_path / "cache", manifest.digest)
    store.start(manifest.to_bytes())
    store.write_chunk(0, read_chunk(directory, manifest, 0))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DeliveryError, match="GB on disk"):
        PackageStore(tmp_path / "cache", manifest.digest).resume()  # the URL source resumes this way too


def _export(directory: Path, manifest: Manifest, out: Path) -> Path:
    out.mkdir()
    for entry in manifest.files:
        (out / entry.path).write_bytes((directory / entry.path).read_bytes())
    (out / "manifest.json").write_bytes(manifest.to_bytes())
    return out


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files honouring ``Range: bytes=N-`` (the standard library's handler ignores Range)."""

    ranges: list[str] = []

    def send_head(self):
        header = self.headers.get("Range")
        if not header:
            return super().send_head()
        type(self).ranges.append(header)
        path = Path(self.translate_path(self.path))
        start = int(header.split("=")[1].rstrip("-"))
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Length", str(path.stat().st_size - start))
        self.end_headers()
        return handle

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("server", ["file", "http-range", "http-no-range"])
def test_url_source_fetches_and_resumes_from_the_first_missing_chunk(package, tmp_path, server):
    directory, manifest = package
    served = _export(directory, manifest, tmp_path / "served")
    store = PackageStore(tmp_path / "cache", manifest.digest)
    store.start(manifest.to_bytes())
    for index in (0, 1):  # a download cut after two chunks
        store.write_chunk(index, read_chunk(directory, manifest, index))
    if server == "file":
        final = fetch_from_url(served.as_uri(), PackageStore(tmp_path / "cache", manifest.digest))
    else:
        handler = _RangeHandler if server == "http-range" else http.server.SimpleHTTPRequestHandler
        handler.log_message = lambda *args: None
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        _RangeHandler.ranges = []
        try:
            final = fetch_from_url(f"http://127.0.0.1:{httpd.server_address[1]}/", PackageStore(tmp_path / "cache", manifest.digest))
        finally:
            httpd.shutdown()
        if server == "http-range":
            assert _RangeHandler.ranges == ["bytes=3096-"]  # chunk 2 starts 4096 bytes in: 3096 into model.safetensors
    assert all((final / f.path).read_bytes() == (directory / f.path).read_bytes() for f in manifest.files)
