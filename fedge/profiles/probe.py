"""Measure this device: host memory, CUDA, Jetson, bitsandbytes and a bounded matmul micro-benchmark."""

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
        gflops=round(matmul_gflops(benchmark_s, device="cuda" if cuda else "cpu"), 1),
        **cuda_fields,
    )
