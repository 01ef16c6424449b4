"""Fit the memory and time models' constants for this machine's backend and write them to profiles/calibration/.

    python benchmarks/calibrate.py [--backend cpu|cuda]

Measures the calibration configurations below (each in a fresh process), fits the framework overhead and the
activation factor (memory) and the per-quantization efficiency and per-layer cost (time) by least squares, and
saves the constants with the raw samples. ``benchmarks/planner_accuracy.py`` then checks the fitted model on
different configurations.
"""

from __future__ import annotations

import json
import platform
import time

import numpy as np
from measure_training import ALL, QV, THREADS, describe, measure, start, top_setup

from profiles.calibration import Calibration, calibration_file, fit_memory, fit_time
from profiles.memory import predict_memory
from profiles.model_shape import load_model_shape
from profiles.probe import matmul_gflops
from profiles.timing import step_flops

CALIBRATION_SET = [
    top_setup("fp32", 8, 2, QV, 8, 48),
    top_setup("fp32", 16, 6, QV, 16, 48, examples=128),
    top_setup("fp32", 8, 12, ALL, 8, 64),
    top_setup("fp32", 32, 4, QV, 32, 96),
    top_setup("fp32", 8, 8, QV, 8, 128, checkpointing=True),
    top_setup("fp32", 4, 16, QV, 4, 32, examples=128),
    top_setup("fp32", 8, 3, QV, 64, 48, optimizer="sgd", examples=128),
    top_setup("bf16", 8, 20, QV, 4, 32, examples=16),
    top_setup("fp32", 16, 12, QV, 16, 64, checkpointing=True),
    top_setup("fp32", 8, 20, ALL, 8, 48, checkpointing=True),
]


def main() -> None:
    backend, console = start(__doc__.split("\n")[0])
    gflops = matmul_gflops(2.0, device=backend)
    console.print(f"matmul throughput on this {backend}: {gflops:.1f} GFLOP/s ({THREADS} threads)")
    shape = load_model_shape("smollm2-135m-instruct")
    results = []
    for setup in CALIBRATION_SET:
        started = time.perf_counter()
        result = measure(setup, backend)
        console.print(f"  {describe(setup):45s} peak {result['peak_bytes'] / 2**20:7.0f} MiB, {result['step_seconds']:6.2f} s/step ({time.perf_counter() - started:.0f} s)")
        results.append(result)
    raw = [predict_memory(shape, setup, Calibration.uncalibrated()) for setup in CALIBRATION_SET]
    overhead, factor, checkpoint_factor = fit_memory(
        np.array([part.total - part.activations for part in raw]),
        np.array([part.activations for part in raw]),
        np.array([setup.gradient_checkpointing for setup in CALIBRATION_SET]),
        np.array([result["peak_bytes"] for result in results]),
    )
    efficiencies, per_layer = fit_time(
        np.array([step_flops(shape, setup) / (gflops * 1e9) for setup in CALIBRATION_SET]),
        [setup.quantization for setup in CALIBRATION_SET],
        np.array([setup.depth for setup in CALIBRATION_SET]),
        np.array([result["step_seconds"] for result in results]),
    )
    note = f"Fitted by benchmarks/calibrate.py on {platform.machine()} {platform.processor() or ''}, {THREADS} threads, {time.strftime('%Y-%m-%d')}; efficiencies are shares of the probed matmul rate."
    samples = tuple({"setup": describe(setup), **result, "gflops": gflops} for setup, result in zip(CALIBRATION_SET, results))
    calibration = Calibration(backend, True, overhead, factor, checkpoint_factor, efficiencies, per_layer, note, samples)
    path = calibration_file(backend)
    path.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    console.print(f"overhead {overhead / 2**20:.0f} MiB, activation factor {factor:.2f} ({checkpoint_factor:.2f} checkpointed), efficiencies {efficiencies}, {per_layer * 1e3:.1f} ms per layer-step -> {path}")


if __name__ == "__main__":
    main()
