"""The backbone as each planned quantization ships: packaged (or found in the cache) once, served to the devices
allowed to fetch it, and named in assignments by a spec built once per quantization."""

from __future__ import annotations

import logging

from fedge.coordinator.delivery import BackboneServer
from fedge.quantization.backbone import BackboneSource
from fedge.quantization.package import chunk_bytes_for, package_backbone
from fedge.wire import BackboneSpec

log = logging.getLogger(__name__)


class Backbones:
    def __init__(self, source: BackboneSource, name: str, server: BackboneServer, max_frame_kb: int, url: str | None):
        """``name``: the backbone as the config names it; ``url``: where exported packages are served, if anywhere."""
        self.source = source
        self.name = name
        self.server = server
        self.max_frame_kb = max_frame_kb
        self.url = url
        self._specs: dict[str, BackboneSpec] = {}

    def offer(self, quantizations: set[str]) -> None:
        """Build (or find in the cache) the backbone in every quantization a plan hands out, ready to serve."""
        for quantization in sorted(quantizations - set(self._specs)):
            package = package_backbone(self.source, quantization, chunk_bytes_for(self.max_frame_kb))
            self.server.offer(package)
            url = f"{self.url.rstrip('/')}/{package.digest}/" if self.url else None
            self._specs[quantization] = BackboneSpec(self.name, package.digest, quantization, package.manifest.total_bytes, url)
            log.info("backbone %s as %s: %d files, %.1f MB, digest %s…", self.name, quantization, len(package.manifest.files), package.manifest.total_bytes / 1e6, package.digest[:12])

    def spec_for(self, agent_id: str, quantization: str) -> BackboneSpec:
        """The spec an assignment carries; the device may now fetch that package."""
        spec = self._specs[quantization]
        self.server.allow(agent_id, spec.sha256)
        return spec
