"""Backbone delivery: the package manifest, the device's resumable download store, and the HTTP/file source.

A backbone package is a directory of files (weights, config, tokenizer) described by a manifest: each file's size
and sha256, and the sha256 of every fixed-size chunk of the files laid end to end. The assignment names the sha256
of the manifest, so the manifest vouches for every chunk and every file. Nothing here imports torch or paho.
"""

from fedge.delivery.manifest import Manifest, ManifestError, PackageFile, build_manifest, read_chunk
from fedge.delivery.store import DeliveryError, DownloadProgress, PackageStore

__all__ = [
    "DeliveryError",
    "DownloadProgress",
    "Manifest",
    "ManifestError",
    "PackageFile",
    "PackageStore",
    "build_manifest",
    "read_chunk",
]
