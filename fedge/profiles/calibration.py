"""Per-backend constants of the memory and time models, fitted to measurements kept in the repo.

``fedge/profiles/calibration/<backend>.json`` holds the constants and the samples they were fitted from
(``benchmarks/calibrate.py`` measures and rewrites it). A backend nobody could measure yet carries documented
defaults with ``"measured": false``, and the planner says so in its output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

CALIBRATION_DIR = Path(__file__).with_name("calibration")
BACKENDS = ("cpu", "cuda")


@dataclass(frozen=True)
class Calibration:
    backend: str
    measured: bool
    overhead_bytes: int  # process + runtime (+ CUDA context) before any model tensor
    activation_factor: float  # measured activation memory / counted saved elements
    checkpoint_factor: float  # the same with gradient checkpointing
    efficiencies: dict[str, float]  # achieved share of the device's throughput figure, per quantization
    per_layer_seconds: float  # fixed cost per trained layer per step (launches, Python)
    note: str = ""
    bitsandbytes_overhead_bytes: int = 0  # what a 4/8-bit base adds besides its weights (kernels, dequantisation buffers)
    bitsandbytes_samples: tuple[dict, ...] = field(default=(), repr=False)
    samples: tuple[dict, ...] = field(default=(), repr=False)
    wide_lora_factor: float | None = None  # LoRA on the attention output and MLP (fedge.profiles.memory); None: activation_factor

    @classmethod
    def uncalibrated(cls, quantizations=("fp32",)) -> Calibration:
        """Unit factors, no overhead, no per-layer cost: the textbook model that calibration improves on."""
        return cls("none", False, 0, 1.0, 1.0, {quantization: 1.0 for quantization in quantizations}, 0.0)

    def activation_factor_for(self, gradient_checkpointing: bool) -> float:
        return self.checkpoint_factor if gradient_checkpointing else self.activation_factor

    @property
    def wide_lora_factor_or_default(self) -> float:
        return self.activation_factor if self.wide_lora_factor is None else self.wide_lora_factor

    def efficiency(self, quantization: str) -> float:
        if quantization in self.efficiencies:
            return self.efficiencies[quantization]
        return min(self.efficiencies.values())  # an unmeasured quantization: assume the slowest measured one

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "measured": self.measured,
            "overhead_bytes": self.overhead_bytes,
            "activation_factor": self.activation_factor,
            "checkpoint_factor": self.checkpoint_factor,
            "wide_lora_factor": self.wide_lora_factor,
            "efficiencies": self.efficiencies,
            "per_layer_seconds": self.per_layer_seconds,
            "note": self.note,
            "bitsandbytes_overhead_bytes": self.bitsandbytes_overhead_bytes,
            "bitsandbytes_samples": list(self.bitsandbytes_samples),
            "samples": list(self.samples),
        }


def calibration_file(backend: str) -> Path:
    return CALIBRATION_DIR / f"{backend}.json"


@cache
def load_calibration(backend: str) -> Calibration:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    raw = json.loads(calibration_file(backend).read_text())
    raw["samples"] = tuple(raw.get("samples", ()))
    raw["bitsandbytes_samples"] = tuple(raw.get("bitsandbytes_samples", ()))
    return Calibration(**raw)


def fit_memory(fixed_bytes: np.ndarray, activation_bytes: np.ndarray, wide_bytes: np.ndarray, checkpointed: np.ndarray, measured_bytes: np.ndarray) -> tuple[int, float, float, float]:
    """Least squares for ``measured = fixed + overhead + factor · (activations − wide) + wide factor · wide`` on plain
    samples and ``… + checkpoint factor · activations`` on checkpointed ones, where ``wide`` is the counted part of
    LoRA beyond the attention inputs: returns (overhead, factor, wide factor, checkpoint factor)."""
    activations, wide = activation_bytes.astype(float), wide_bytes.astype(float)
    plain = ~np.asarray(checkpointed, dtype=bool)
    design = np.stack([np.ones_like(activations), np.where(plain, activations - wide, 0.0), np.where(plain, wide, 0.0), np.where(plain, 0.0, activations)], axis=1)
    (overhead, factor, wide_factor, checkpoint_factor), *_ = np.linalg.lstsq(design, measured_bytes.astype(float) - fixed_bytes, rcond=None)
    return int(overhead), float(factor), float(wide_factor), float(checkpoint_factor)


def fit_time(ideal_seconds: np.ndarray, quantizations: list[str], depths: np.ndarray, measured_seconds: np.ndarray) -> tuple[dict[str, float], float]:
    """Least squares for ``measured = ideal / efficiency[q] + per_layer * depth``, where ``ideal`` is FLOPs over
    the device's throughput figure: returns (efficiency per quantization, per-layer seconds)."""
    kinds = sorted(set(quantizations))
    columns = [np.where(np.array(quantizations) == kind, ideal_seconds, 0.0) for kind in kinds] + [depths.astype(float)]
    solution, *_ = np.linalg.lstsq(np.stack(columns, axis=1), measured_seconds, rcond=None)
    efficiencies = {kind: float(1.0 / inverse) for kind, inverse in zip(kinds, solution[:-1])}
    return efficiencies, max(float(solution[-1]), 0.0)
