"""Fitting the memory and time models' constants to measured training steps (``calibrate.py``, ``cuda_check.py``).

Each sample is one configuration on one model's shape: the plain ones (fp32/bf16 bases) fit the framework overhead
and the activation factors (memory) and every sample the per-quantization efficiency and per-layer cost (time);
what bitsandbytes adds is its bases' mean excess over the plain model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.profiles.calibration import Calibration, fit_memory, fit_time
from fedge.profiles.memory import ACTIVATION_BYTES, TrainingSetup, predict_memory, wide_lora_activation_elements
from fedge.profiles.model_shape import ModelShape
from fedge.profiles.timing import step_flops


@dataclass(frozen=True)
class Sample:
    shape: ModelShape
    setup: TrainingSetup
    label: str
    peak_bytes: int
    step_seconds: float

    def record(self, gflops: float) -> dict:
        return {"setup": self.label, "model": self.shape.name, "peak_bytes": self.peak_bytes, "step_seconds": self.step_seconds, "gflops": gflops}


def fit_calibration(backend: str, plain: list[Sample], bitsandbytes: list[Sample], gflops: float, note: str) -> Calibration:
    """Constants fitted to ``plain`` and ``bitsandbytes`` samples, marked measured, the samples kept with them."""
    raw = [predict_memory(s.shape, s.setup, Calibration.uncalibrated()) for s in plain]
    overhead, factor, wide_factor, checkpoint_factor = fit_memory(
        np.array([part.total - part.activations for part in raw]),
        np.array([part.activations for part in raw]),
        np.array([wide_lora_activation_elements(s.shape, s.setup) * ACTIVATION_BYTES[s.setup.quantization] for s in plain]),
        np.array([s.setup.gradient_checkpointing for s in plain]),
        np.array([s.peak_bytes for s in plain]),
    )
    timed = plain + bitsandbytes
    efficiencies, per_layer = fit_time(
        np.array([step_flops(s.shape, s.setup) / (gflops * 1e9) for s in timed]),
        [s.setup.quantization for s in timed],
        np.array([s.setup.depth for s in timed]),
        np.array([s.step_seconds for s in timed]),
    )
    plain_model = Calibration(backend, True, overhead, factor, checkpoint_factor, efficiencies, per_layer, wide_lora_factor=wide_factor)
    excess = [s.peak_bytes - predict_memory(s.shape, s.setup, plain_model).total for s in bitsandbytes]
    return Calibration(
        backend, True, overhead, factor, checkpoint_factor, efficiencies, per_layer, note=note, samples=tuple(s.record(gflops) for s in plain),
        bitsandbytes_overhead_bytes=int(np.mean(excess)) if excess else 0, bitsandbytes_samples=tuple(s.record(gflops) for s in bitsandbytes), wide_lora_factor=wide_factor,
    )


def summary(calibration: Calibration) -> str:
    return (f"overhead {calibration.overhead_bytes / 2**20:.0f} MiB (+{calibration.bitsandbytes_overhead_bytes / 2**20:.0f} MiB on a 4/8-bit base), activation factor "
            f"{calibration.activation_factor:.2f} ({calibration.wide_lora_factor_or_default:.2f} for LoRA beyond the attention inputs, {calibration.checkpoint_factor:.2f} checkpointed), "
            f"efficiencies {calibration.efficiencies}, {calibration.per_layer_seconds * 1e3:.1f} ms per layer-step")
