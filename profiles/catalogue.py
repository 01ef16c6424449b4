"""Named device entries, so one machine can host a simulated heterogeneous fleet."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from fedge.wire import DeviceProfile

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")
_GB = 1024**3


@cache
def _entries() -> dict[str, dict]:
    return yaml.safe_load(CATALOGUE_FILE.read_text())


def catalogue_names() -> list[str]:
    return sorted(_entries())


def load_catalogue_profile(name: str) -> DeviceProfile:
    """The catalogued device ``name`` as a ``DeviceProfile`` (available memory = total for a simulated device)."""
    entries = _entries()
    if name not in entries:
        raise KeyError(f"unknown device {name!r}; the catalogue has {', '.join(sorted(entries))}")
    entry = dict(entries[name])
    ram = int(entry.pop("ram_total_gb") * _GB)
    cuda_gb = entry.pop("cuda_total_gb", None)
    cuda_bytes = int(cuda_gb * _GB) if cuda_gb else None
    return DeviceProfile(
        name=name,
        source="catalogue",
        ram_total_bytes=ram,
        ram_available_bytes=ram,
        cuda_total_bytes=cuda_bytes,
        cuda_free_bytes=cuda_bytes,
        **entry,
    )
