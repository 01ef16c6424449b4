"""Backbone packages: the checkpoint a device loads, in the form it was assigned, ready to send.

``nf4`` and ``int8`` packages hold bitsandbytes-serialised weights (the device loads them quantized without ever
materialising the 32-bit model); ``bf16``/``fp16``/``fp32`` hold plain weights of that dtype. Tokenizer and config
travel with the weights. A package is built once per source checkpoint and quantization under the cache and reused;
its manifest (``fedge.delivery``) depends on the chunk size, so one is kept per chunk size.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedge.delivery import Manifest, build_manifest
from fedge.quantization.backbone import LOADING, BackboneSource, bitsandbytes_config, cache_root, check_quantization, resolve_dtype
from fedge.quantization.build_lock import build_once

log = logging.getLogger(__name__)


def chunk_bytes_for(max_frame_kb: int) -> int:
    """The package chunk size for a coordinator's ``max_frame_kb``: a chunk and its message header fit in one frame."""
    return max_frame_kb * 1024 - 1024


@dataclass(frozen=True)
class BackbonePackage:
    directory: Path
    manifest: Manifest
    manifest_bytes: bytes

    @property
    def digest(self) -> str:
        return self.manifest.digest


def package_backbone(source: BackboneSource, quantization: str, chunk_bytes: int) -> BackbonePackage:
    """The package of ``source`` in ``quantization``, built on first use (a few seconds for a small model)."""
    check_quantization(quantization)
    directory = cache_root() / "packages" / f"{source.sha256[:16]}-{quantization}"
    build_once(directory, lambda path: (path / "config.json").exists(), lambda scratch: _build(source, quantization, scratch), f"the {quantization} package of {source.name}")
    manifest_file = directory / "manifests" / f"{chunk_bytes}.json"
    if not manifest_file.exists():
        manifest_file.parent.mkdir(exist_ok=True)
        manifest = build_manifest(directory, source.name, quantization, chunk_bytes)
        manifest_file.write_bytes(manifest.to_bytes())
    data = manifest_file.read_bytes()
    manifest = Manifest.parse(data, hashlib.sha256(data).hexdigest())
    return BackbonePackage(directory, manifest, data)


def export_package(package: BackbonePackage, out: Path) -> Path:
    """Copy a package to ``out/<digest>/`` with its ``manifest.json``, for serving from a URL."""
    target = out / package.digest
    target.mkdir(parents=True, exist_ok=True)
    for entry in package.manifest.files:
        shutil.copyfile(package.directory / entry.path, target / entry.path)
    (target / "manifest.json").write_bytes(package.manifest_bytes)
    return target


def _build(source: BackboneSource, quantization: str, directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("packaging backbone %s as %s", source.name, quantization)
    quantization_config = bitsandbytes_config(quantization)
    kwargs = {"quantization_config": quantization_config, "device_map": {"": "cpu"}} if quantization_config else {"dtype": resolve_dtype(quantization)}
    with LOADING, torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs)
        model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source.directory).save_pretrained(directory)
