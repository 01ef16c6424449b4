"""Measure this device: host memory, CUDA, Jetson, bitsandbytes, and bounded matmul and memory-copy micro-benchmarks.

A benchmark run while other work holds the CPU measures that work's leftovers: the probe watches how busy the
machine is while it measures, and where others held more than ``BUSY_SHARE`` of it, says so and measures again
after a pause, keeping the best figure and a note of how busy it was. Links cannot be measured without a peer: a
probed profile leaves them unknown (None), as it does whatever else it cannot measure.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import psutil

from fedge.wire import DeviceProfile

log = logging.getLogger(__name__)

_JETSON_RELEASE = Path("/etc/nv_tegra_release")
_DEVICE_TREE = Path("/proc/device-tree")


def detect_jetson(release: Path = _JETSON_RELEASE, device_tree: Path = _DEVICE_TREE) -> str | None:
    """The Jetson model string, or None when this is not a Jetson."""
    model_file = device_tree / "model"
    model = model_file.read_bytes().rstrip(b"\0").decode(errors="replace").strip() if model_file.exists() else ""
    compatible_file = device_tree / "compatible"
    compatible = compatible_file.read_bytes() if compatible_file.exists() else b""
    if "jetson" in model.lower() or b"nvidia,tegra" in compatible or release.exists():
        return model or "NVIDIA Jetson"
    return None


def bitsandbytes_usable() -> bool:
    """True when a 4-bit NF4 layer actually runs a forward pass here."""
    try:
        import bitsandbytes as bnb
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.float32).to(device)
        layer(torch.ones(1, 64, device=device))
        return True
    except Exception as error:  # any failure means "not usable here"; the reason is logged
        log.info("bitsandbytes not usable: %s", error)
        return False


def matmul_gflops(budget_s: float = 1.5, size: int = 512, device: str = "cpu") -> float:
    """Achieved fp32 GFLOP/s of square matmuls, stopping once ``budget_s`` (<= 2 s) is spent."""
    import torch

    budget_s = min(budget_s, 2.0)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < budget_s:
        torch.matmul(a, b)
        runs += 1
        if device != "cpu":
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return 2 * size**3 * runs / elapsed / 1e9


BUSY_SHARE = 0.25  # others' share of the CPU above which a benchmark is taken again
BUSY_RETRIES = 2
BUSY_PAUSE_S = 2.0
COPY_BYTES = 64 * 2**20


def memory_bandwidth_gbs(budget_s: float = 0.5, device: str = "cpu") -> float:
    """Achieved copy bandwidth in GB/s (bytes read plus written) of a 64 MiB tensor, within ``budget_s``."""
    import torch

    source = torch.ones(COPY_BYTES // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up: pages touched, caches primed
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < budget_s:
        target.copy_(source)
        runs += 1
        if device != "cpu":
            torch.cuda.synchronize()
    return 2 * COPY_BYTES * runs / (time.perf_counter() - started) / 1e9


def others_share(measure) -> tuple[float, float]:
    """``measure()``'s result and the share of the machine's CPU other processes used while it ran."""
    me = psutil.Process()
    psutil.cpu_percent(None)
    mine = me.cpu_times()
    started = time.perf_counter()
    result = measure()
    elapsed = time.perf_counter() - started
    total = psutil.cpu_percent(None) / 100
    used = me.cpu_times()
    own = (used.user + used.system - mine.user - mine.system) / max(elapsed, 1e-6) / (psutil.cpu_count() or 1)
    return result, max(total - own, 0.0)


def measured_when_quiet(what: str, measure) -> tuple[float, str | None]:
    """The best of up to ``1 + BUSY_RETRIES`` runs of ``measure``, taken again while other work held more than
    ``BUSY_SHARE`` of the CPU; and a note when even the last run was taken on a busy machine."""
    best, busy = others_share(measure)
    for _ in range(BUSY_RETRIES):
        if busy <= BUSY_SHARE:
            return best, None
        log.warning("the machine is busy (other work held %.0f%% of its CPU while measuring %s): measuring again in %.0f s", 100 * busy, what, BUSY_PAUSE_S)
        time.sleep(BUSY_PAUSE_S)
        again, busy = others_share(measure)
        best = max(best, again)
    if busy <= BUSY_SHARE:
        return best, None
    log.warning("the machine stayed busy (%.0f%% of its CPU held by other work): %s may be under what this device can do", 100 * busy, what)
    return best, f"{what} measured while other work held {100 * busy:.0f}% of the CPU: it may be low"


def probe(name: str | None = None, benchmark_s: float = 1.5) -> DeviceProfile:
    """A ``DeviceProfile`` measured on this machine."""
    import torch

    memory = psutil.virtual_memory()
    jetson = detect_jetson()
    cuda = torch.cuda.is_available()
    cuda_fields: dict = {}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        major, minor = torch.cuda.get_device_capability()
        cuda_fields = {
            "cuda_device_name": torch.cuda.get_device_name(),
            "cuda_total_bytes": int(total),
            "cuda_free_bytes": int(free),
            "cuda_capability": f"{major}.{minor}",
        }
    device_class = "jetson" if jetson else ("cuda" if cuda else "cpu")
    device = "cuda" if cuda else "cpu"
    gflops, gflops_note = measured_when_quiet("matmul throughput", lambda: matmul_gflops(benchmark_s, device=device))
    bandwidth, bandwidth_note = measured_when_quiet("memory bandwidth", lambda: memory_bandwidth_gbs(min(benchmark_s, 0.5), device=device))
    notes = [note for note in (gflops_note, bandwidth_note) if note]
    return DeviceProfile(
        name=name or platform.node() or "device",
        source="probe",
        device_class=device_class,
        ram_total_bytes=int(memory.total),
        ram_available_bytes=int(memory.available),
        cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        is_jetson=jetson is not None,
        jetson_model=jetson,
        unified_memory=jetson is not None,
        bitsandbytes_usable=bitsandbytes_usable(),
        gflops=round(gflops, 1),
        memory_bandwidth_gbs=round(bandwidth, 1),
        source_note="; ".join(notes) or None,
        **cuda_fields,
    )
