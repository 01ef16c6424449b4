"""What this process can use and what it used: free memory before training, peak memory during it.

On CPU (and Jetson, whose GPU shares host memory) the measure is the process's resident set: Linux resets its
high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs, so the peak covers the training alone. On a
discrete CUDA GPU it is the peak memory torch's allocator reserved.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def available_bytes(device: str) -> int:
    """Memory a training run in this process may occupy: free memory plus what the process already holds."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)


def memory_shortfall(needed_bytes: int, device: str) -> str | None:
    """Why a planned peak of ``needed_bytes`` cannot fit in the memory free now, or None when it fits."""
    free = available_bytes(device)
    if needed_bytes <= free:
        return None
    return f"the plan needs {needed_bytes / 2**30:.2f} GiB at its peak; {free / 2**30:.2f} GiB is free on {device}"


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then covers the whole process lifetime


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_reserved(device))
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
