"""Fetch a backbone package from a URL: ``file://`` or ``http(s)://`` on the operator's network.

The URL names the package directory (``fedge backbone export`` writes one; any static file server can serve it):
``manifest.json`` and the files beside it. The download streams the files in manifest order from the first
missing chunk on, asking each file from its first needed byte (an HTTP Range request; a server that ignores it is
read past), and stores every chunk only after it matches the manifest.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from fedge.delivery.manifest import MAX_MANIFEST_BYTES
from fedge.delivery.store import DeliveryError, DownloadProgress, PackageStore

TIMEOUT_S = 30.0


def fetch_from_url(url: str, store: PackageStore) -> Path:
    """Complete ``store``'s package from ``url`` (resuming a partial download); returns the package directory."""
    base = url if url.endswith("/") else url + "/"
    manifest = store.resume()
    if manifest is None:
        with _open(base + "manifest.json") as response:
            data = response.read(MAX_MANIFEST_BYTES + 1)
        manifest = store.start(data)
    missing = set(store.missing())
    progress = DownloadProgress(f"backbone {manifest.name} ({manifest.quantization}) from {base}", manifest.total_bytes, store.have_bytes())
    if missing:
        start = min(missing) * manifest.chunk_bytes
        buffer, chunk, file_start = bytearray(), start // manifest.chunk_bytes, 0
        for entry in manifest.files:
            file_end = file_start + entry.size
            if file_end <= start or not missing:
                file_start = file_end
                continue
            offset = max(start - file_start, 0)
            for block in _read_from(base + entry.path, offset, entry.size):
                buffer += block
                while chunk < manifest.chunk_count and len(buffer) >= manifest.chunk_size(chunk):
                    size = manifest.chunk_size(chunk)
                    if chunk in missing:
                        if not store.write_chunk(chunk, bytes(buffer[:size])):
                            raise DeliveryError(f"chunk {chunk} from {base} does not match the manifest")
                        missing.discard(chunk)
                        progress.add(size)
                    del buffer[:size]
                    chunk += 1
            file_start = file_end
    return store.finish()


def _open(url: str, offset: int = 0):
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DeliveryError(f"cannot read {url}: {error}") from None


def _read_from(url: str, offset: int, size: int):
    """The bytes of ``url`` from ``offset`` to ``size``, in blocks; skips ahead where the server sends it all."""
    with _open(url, offset) as response:
        status = getattr(response, "status", None)
        skip = offset if offset and status != 206 else 0  # 200 (or file://): the whole file came back
        remaining = size - offset
        while remaining > 0:
            try:
                block = response.read(min(1 << 20, remaining + skip))
            except OSError as error:
                raise DeliveryError(f"reading {url} failed: {error}") from None
            if not block:
                raise DeliveryError(f"{url} ended {remaining} bytes early")
            if skip:
                dropped = min(skip, len(block))
                block, skip = block[dropped:], skip - dropped
            remaining -= len(block)
            yield block
