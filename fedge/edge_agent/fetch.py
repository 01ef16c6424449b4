"""Fetch the assigned backbone package: from the device's cache, a URL the assignment names, or the coordinator.

Over MQTT the agent pulls: it asks for the manifest, then for windows of chunks, keeping about two windows in
flight so the link never idles; a chunk that fails its hash is dropped and asked for again, and after
``stall_s`` without progress the missing chunks of the current window are asked for again. Messages that are not
backbone parts are handed back to the agent untouched. The package is cached by digest, so a second run, or a
second agent on the same disk, downloads nothing; a cached package is checked before each use (sizes every time,
digests of files changed since) and what is damaged is fetched again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from fedge.delivery import DeliveryError, DownloadProgress, PackageStore
from fedge.delivery.url import fetch_from_url
from fedge.transport import MqttTransport, Received
from fedge.wire import BackbonePart, BackboneRequest, BackboneSpec, topics
from fedge.quantization.backbone import cache_root

log = logging.getLogger(__name__)


def package_cache() -> Path:
    """Where an agent keeps backbone packages unless told otherwise (``fedge agent --cache``)."""
    return cache_root() / "received"


class BackboneFetcher:
    def __init__(self, transport: MqttTransport, agent_id: str, cache_dir: Path, defer: Callable[[Received], None], window: int = 32, stall_s: float = 10.0, max_stalls: int = 12):
        self.transport = transport
        self.agent_id = agent_id
        self.cache_dir = cache_dir
        self.defer = defer  # where messages that are not backbone parts go (the agent handles them later)
        self.window = window
        self.stall_s = stall_s
        self.max_stalls = max_stalls

    def fetch(self, spec: BackboneSpec) -> Path:
        """The directory of the verified package ``spec`` names, downloading what the cache lacks."""
        store = PackageStore(self.cache_dir, spec.sha256)
        with store.locked():
            if store.complete():  # perhaps another agent on this disk finished it while we waited
                damaged = store.intact()
                if not damaged:
                    return store.final_dir
                log.warning("%s: the cached backbone %s is damaged (%s); fetching those files again", self.agent_id, store.final_dir, ", ".join(damaged))
                store.reopen_damaged(damaged)
            if spec.url:
                return fetch_from_url(spec.url, store)
            return self._fetch_over_mqtt(spec, store)

    def _fetch_over_mqtt(self, spec: BackboneSpec, store: PackageStore) -> Path:
        manifest = store.resume()
        if manifest is None:
            manifest = store.start(self._receive_manifest(spec.sha256))
        else:
            log.info("%s: resuming the backbone download with %d of %d chunks verified", self.agent_id, manifest.chunk_count - len(store.missing()), manifest.chunk_count)
        progress = DownloadProgress(f"{self.agent_id}: backbone {manifest.name} ({manifest.quantization})", manifest.total_bytes, store.have_bytes())
        missing, stalls = store.missing(), 0
        while missing:
            still = self._fetch_missing(store, missing, progress)
            stalls = stalls + 1 if len(still) == len(missing) else 0
            if stalls >= self.max_stalls:
                raise DeliveryError(f"backbone download stalled: {len(still)} chunks still missing after {stalls} tries of {self.stall_s:.0f} s")
            if still:
                log.warning("%s: no backbone chunk for %.0f s; asking again for the %d missing", self.agent_id, self.stall_s, len(still))
            missing = still
        return store.finish()

    def _receive_manifest(self, digest: str) -> bytes:
        for _ in range(self.max_stalls):
            self._request(digest, -1, 0)
            part = self._next_part(digest, time.monotonic() + self.stall_s)
            while part is not None and part.index != -1:
                part = self._next_part(digest, time.monotonic() + self.stall_s)
            if part is not None:
                return part.data
        raise DeliveryError(f"the coordinator did not send the backbone manifest {digest[:12]}… in {self.max_stalls * self.stall_s:.0f} s")

    def _fetch_missing(self, store: PackageStore, missing: list[int], progress: DownloadProgress) -> list[int]:
        """Ask for the missing chunks in windows, two windows ahead; returns what is still missing when the chunks
        stop coming for ``stall_s`` (empty when done)."""
        wanted = set(missing)
        queue = list(missing)
        requested = 0
        while wanted:
            while requested < len(queue) and requested - (len(missing) - len(wanted)) < 2 * self.window:
                first = queue[requested]
                run = 1
                while run < self.window and requested + run < len(queue) and queue[requested + run] == first + run:
                    run += 1
                self._request(store.digest, first, run)
                requested += run
            part = self._next_part(store.digest, time.monotonic() + self.stall_s)
            if part is None:
                return sorted(wanted)
            if part.index in wanted and store.write_chunk(part.index, part.data):
                wanted.discard(part.index)
                progress.add(len(part.data))
        return []

    def _request(self, digest: str, first: int, count: int) -> None:
        self.transport.publish(topics.fetch(self.agent_id), BackboneRequest(self.agent_id, digest, first, count))

    def _next_part(self, digest: str, deadline: float) -> BackbonePart | None:
        while (left := deadline - time.monotonic()) > 0:
            received = self.transport.receive(timeout_s=left)
            if received is None:
                return None
            if isinstance(received.message, BackbonePart) and received.message.digest == digest:
                return received.message
            self.defer(received)
        return None
