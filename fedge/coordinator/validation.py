"""Checks a hello must pass before its device is planned, and an adapter update before it may touch the global model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedge.strategies.base import CHANGE_RIGHT_SUFFIX
from fedge.wire import AdapterUpdate, Hello


class UpdateRejected(Exception):
    """An update refused for ``reason`` (sent back to the agent in a Reject)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Expectation:
    """What the current round expects from one agent."""

    run_id: str
    round: int
    deadline_unix: float
    shapes: dict[str, tuple[int, int]]
    scaling: float


def validate_update(update: AdapterUpdate, expectation: Expectation | None, already_received: bool, now: float) -> None:
    """Raise ``UpdateRejected`` naming the first problem; return quietly for a usable update."""
    if expectation is None:
        raise UpdateRejected("unknown_agent", f"{update.agent_id} has no assignment in this run")
    if update.run_id != expectation.run_id:
        raise UpdateRejected("wrong_run", f"run {update.run_id!r} is not {expectation.run_id!r}")
    if update.round != expectation.round:
        raise UpdateRejected("wrong_round", f"update for round {update.round}, current round is {expectation.round}")
    if already_received:
        raise UpdateRejected("duplicate", f"{update.agent_id} already sent its round-{update.round} update")
    if now > expectation.deadline_unix:
        raise UpdateRejected("late", f"arrived {now - expectation.deadline_unix:.1f} s after the round deadline")
    if update.num_examples < 1:
        raise UpdateRejected("bad_count", "num_examples must be positive")
    missing = sorted(set(expectation.shapes) - set(update.tensors))
    unexpected = sorted(set(update.tensors) - set(expectation.shapes))
    if missing or unexpected:
        raise UpdateRejected("bad_keys", f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, shape in expectation.shapes.items():
        value = update.tensors[key]
        if tuple(value.shape) != shape:
            raise UpdateRejected("bad_shape", f"{key}: {tuple(value.shape)} instead of {shape}")
        if not np.isfinite(value).all():
            raise UpdateRejected("not_finite", f"{key} holds NaN or Inf")
        if key.endswith(CHANGE_RIGHT_SUFFIX) and (off := orthonormal_error(value)) > ORTHONORMAL_TOLERANCE:
            raise UpdateRejected("not_orthonormal", f"{key}: its rows are {off:.2g} from orthonormal (or zero); the change's size belongs in the left factor")


ORTHONORMAL_TOLERANCE = 0.02  # float16 rounding of unit rows of 4096 columns stays near 1e-3


def orthonormal_error(rows: np.ndarray) -> float:
    """The largest entry of G − D, G = rows·rowsᵀ and D its diagonal rounded to 0 or 1: zero for rows that are
    orthonormal or zero (a factored change below its full rank pads with zero rows)."""
    gram = rows.astype(np.float32) @ rows.astype(np.float32).T
    target = np.diag((np.diag(gram) > 0.5).astype(np.float32))
    return float(np.abs(gram - target).max()) if gram.size else 0.0


SITE_CLASS = "site"  # the device class a site aggregator says hello with (it stands for a group of devices)
_BYTES_MAX = 2**50  # 1 PiB: more memory than any device
_RATE_MAX = 1e7  # GFLOP/s, GB/s and Mbit/s: a bound no edge device reaches
MAX_NAME = 128
MAX_NOTE = 2048
MAX_LABEL_ENTRIES = 4096


def profile_problems(hello: Hello, num_labels: int) -> list[str]:
    """Why a hello's profile cannot be planned: every number finite, positive and in range, before the planner
    sees it. Empty when it can."""
    profile = hello.profile
    problems = []

    def within(name: str, value: float | int | None, low: float, high: float, required: bool = False) -> None:
        if value is None:
            if required:
                problems.append(f"{name}: missing")
        elif not (math.isfinite(value) and low <= value <= high):
            problems.append(f"{name}: {value!r} is not in [{low:g}, {high:g}]")

    within("ram_total_bytes", profile.ram_total_bytes, 1, _BYTES_MAX, required=True)
    within("ram_available_bytes", profile.ram_available_bytes, 0, profile.ram_total_bytes if profile.ram_total_bytes > 0 else _BYTES_MAX, required=True)
    within("cpu_cores", profile.cpu_cores, 1, 4096, required=True)
    within("gflops", profile.gflops, 1e-3, _RATE_MAX, required=True)
    within("fp16_gflops", profile.fp16_gflops, 1e-3, _RATE_MAX)
    within("memory_bandwidth_gbs", profile.memory_bandwidth_gbs, 1e-3, _RATE_MAX)
    within("uplink_mbps", profile.uplink_mbps, 1e-3, _RATE_MAX)
    within("downlink_mbps", profile.downlink_mbps, 1e-3, _RATE_MAX)
    within("usable_memory_fraction", profile.usable_memory_fraction, 0.01, 1.0)
    within("cuda_total_bytes", profile.cuda_total_bytes, 1, _BYTES_MAX)
    if profile.cuda_free_bytes is not None:
        within("cuda_free_bytes", profile.cuda_free_bytes, 0, profile.cuda_total_bytes or 0, required=True)
    if profile.cuda_total_bytes is None and ((profile.cuda_device_name and not profile.unified_memory) or profile.cuda_free_bytes is not None):
        problems.append("cuda_total_bytes: missing for a discrete CUDA device")  # unified memory is counted in RAM
    for name in ("name", "source", "device_class", "cuda_device_name", "cuda_capability", "jetson_model", "source_note"):
        value, longest = getattr(profile, name), MAX_NOTE if name == "source_note" else MAX_NAME
        if value is not None and len(value) > longest:
            problems.append(f"{name}: longer than {longest} characters")
    within("num_examples", hello.num_examples, 1, 1e9)
    within("base_version", hello.base_version, 0, 1e6)
    if len(hello.label_counts) > max(num_labels, 1) * 2 + MAX_LABEL_ENTRIES:
        problems.append(f"label_counts: {len(hello.label_counts)} entries")
    if any(count < 0 for count in hello.label_counts.values()):
        problems.append("label_counts: negative counts")
    return problems
