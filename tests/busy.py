"""A busy machine on demand: stress-ng hogging every core twice over (the busy-machine test and fleet_load --busy)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

HOG_WORKERS = 2 * (os.cpu_count() or 1)


def have_stress_ng() -> bool:
    return shutil.which("stress-ng") is not None


@contextmanager
def oversubscribed() -> Iterator[None]:
    """``stress-ng --cpu`` with ``HOG_WORKERS`` workers for as long as the block runs."""
    hog = subprocess.Popen(["stress-ng", "--cpu", str(HOG_WORKERS), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        hog.terminate()
        hog.wait(timeout=30)
