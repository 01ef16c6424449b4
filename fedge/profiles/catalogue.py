"""Named device entries, so one machine can host a simulated heterogeneous fleet."""

from __future__ import annotations

from dataclasses import replace
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
    entry = entries[name]
    ram = int(entry["memory_gb"] * _GB)
    gpu = int(entry["gpu_memory_gb"] * _GB) if "gpu_memory_gb" in entry else None
    return DeviceProfile(
        name=name,
        source="catalogue",
        device_class=entry["device_class"],
        ram_total_bytes=ram,
        ram_available_bytes=ram,
        cpu_cores=entry["cpu_cores"],
        cuda_device_name=entry.get("cuda_device_name") or (entry.get("model") if entry["device_class"] == "jetson" else None),
        cuda_total_bytes=gpu,
        cuda_free_bytes=gpu,
        cuda_capability=entry.get("cuda_capability"),
        is_jetson=entry["device_class"] == "jetson",
        jetson_model=entry.get("model"),
        unified_memory=entry.get("shared_memory", False),
        bitsandbytes_usable=entry["bitsandbytes"],
        gflops=float(entry["fp32_gflops"]),
        fp16_gflops=float(entry["fp16_gflops"]) if "fp16_gflops" in entry else None,
        memory_bandwidth_gbs=float(entry["memory_bandwidth_gbs"]),
        usable_memory_fraction=float(entry["usable_fraction"]),
        uplink_mbps=float(entry["uplink_mbps"]),
        downlink_mbps=float(entry["downlink_mbps"]),
        source_note=entry["source"],
    )


def simulated_profile(name: str, host_has_cuda: bool, host_bitsandbytes: bool) -> DeviceProfile:
    """The catalogue device ``name`` as this machine can stand in for it.

    A GPU device simulated on a host without CUDA keeps its memory limit (its GPU memory, applied to host memory),
    its throughput and its links, so the planner balances the fleet as it would the real one; but it trains on
    this host's CPU, so the planner picks among the bases a CPU runs (fp32, or NF4/INT8 through bitsandbytes'
    CPU backend) and the agent runs exactly that. ``source`` is ``"simulated"`` and reports say so.
    """
    real = load_catalogue_profile(name)
    if not real.cuda_device_name or host_has_cuda:
        return replace(real, source="simulated", bitsandbytes_usable=real.bitsandbytes_usable and host_bitsandbytes)
    memory = real.ram_total_bytes if real.unified_memory else real.cuda_total_bytes or real.ram_total_bytes
    return replace(
        real,
        source="simulated",
        ram_total_bytes=memory,
        ram_available_bytes=memory,
        cuda_device_name=None,
        cuda_total_bytes=None,
        cuda_free_bytes=None,
        cuda_capability=None,
        unified_memory=False,
        bitsandbytes_usable=host_bitsandbytes,
        source_note=f"{real.source_note}; simulated on a CPU host: the real device's memory limit, throughput and links",
    )
