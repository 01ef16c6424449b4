"""Fit the memory and time models' constants for this machine's backend and write them to fedge/profiles/calibration/.

    python benchmarks/calibrate.py [--backend cpu|cuda] [--quick]

Measures the calibration configurations below (each in a fresh process), fits the framework overhead and the
activation factor (memory) and the per-quantization efficiency and per-layer cost (time) by least squares, and
saves the constants with the raw samples. 4/8-bit bases load from their serialised packages, as agents load them;
what bitsandbytes adds is fitted as their mean excess over the plain model. ``benchmarks/planner_accuracy.py`` then
checks the fitted model on different configurations. ``--quick`` measures four configurations and writes nothing.
"""

from __future__ import annotations

import json
import platform
import time

import numpy as np
from measure_training import ALL, QV, THREADS, describe, measure, start, top_setup

from fedge.profiles.calibration import Calibration, calibration_file, fit_memory, fit_time
from fedge.profiles.memory import ACTIVATION_BYTES, predict_memory, wide_lora_activation_elements
from fedge.profiles.model_shape import load_model_shape
from fedge.profiles.probe import matmul_gflops
from fedge.profiles.timing import step_flops

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
    top_setup("fp32", 16, 4, ALL, 16, 256, examples=32),
    top_setup("fp32", 8, 6, ALL, 16, 128, examples=64),
]
BITSANDBYTES_SET = [
    top_setup("nf4", 16, 6, QV, 16, 48, examples=64),
    top_setup("nf4", 8, 12, QV, 8, 48, examples=64),
    top_setup("int8", 8, 4, QV, 8, 48, examples=64),
]


def main() -> None:
    backend, quick, console = start(__doc__.split("\n")[0])
    plain_set = CALIBRATION_SET[:3] if quick else CALIBRATION_SET
    bitsandbytes_set = BITSANDBYTES_SET[:1] if quick else BITSANDBYTES_SET
    gflops = matmul_gflops(2.0, device=backend)
    console.print(f"matmul throughput on this {backend}: {gflops:.1f} GFLOP/s ({THREADS} threads)")
    shape = load_model_shape("smollm2-135m-instruct")
    results, bitsandbytes_results = [], []
    for setup in plain_set + bitsandbytes_set:
        started = time.perf_counter()
        result = measure(setup, backend)
        console.print(f"  {describe(setup):45s} peak {result['peak_bytes'] / 2**20:7.0f} MiB, {result['step_seconds']:6.2f} s/step ({time.perf_counter() - started:.0f} s)")
        (results if setup in plain_set else bitsandbytes_results).append(result)
    raw = [predict_memory(shape, setup, Calibration.uncalibrated()) for setup in plain_set]
    overhead, factor, wide_factor, checkpoint_factor = fit_memory(
        np.array([part.total - part.activations for part in raw]),
        np.array([part.activations for part in raw]),
        np.array([wide_lora_activation_elements(shape, setup) * ACTIVATION_BYTES[setup.quantization] for setup in plain_set]),
        np.array([setup.gradient_checkpointing for setup in plain_set]),
        np.array([result["peak_bytes"] for result in results]),
    )
    timed = plain_set + bitsandbytes_set
    efficiencies, per_layer = fit_time(
        np.array([step_flops(shape, setup) / (gflops * 1e9) for setup in timed]),
        [setup.quantization for setup in timed],
        np.array([setup.depth for setup in timed]),
        np.array([result["step_seconds"] for result in results + bitsandbytes_results]),
    )
    plain_model = Calibration(backend, True, overhead, factor, checkpoint_factor, efficiencies, per_layer, wide_lora_factor=wide_factor)
    excess = [r["peak_bytes"] - predict_memory(shape, setup, plain_model).total for setup, r in zip(bitsandbytes_set, bitsandbytes_results)]
    bitsandbytes_overhead = int(np.mean(excess))
    note = f"Fitted by benchmarks/calibrate.py on {platform.machine()} {platform.processor() or ''}, {THREADS} threads, {time.strftime('%Y-%m-%d')}; efficiencies are shares of the probed matmul rate."
    samples = tuple({"setup": describe(setup), **result, "gflops": gflops} for setup, result in zip(plain_set, results))
    bitsandbytes_samples = tuple({"setup": describe(setup), **result, "gflops": gflops} for setup, result in zip(bitsandbytes_set, bitsandbytes_results))
    calibration = Calibration(
        backend, True, overhead, factor, checkpoint_factor, efficiencies, per_layer, note=note, samples=samples,
        bitsandbytes_overhead_bytes=bitsandbytes_overhead, bitsandbytes_samples=bitsandbytes_samples, wide_lora_factor=wide_factor,
    )
    summary = f"overhead {overhead / 2**20:.0f} MiB (+{bitsandbytes_overhead / 2**20:.0f} MiB on a 4/8-bit base), activation factor {factor:.2f} ({wide_factor:.2f} for LoRA beyond the attention inputs, {checkpoint_factor:.2f} checkpointed), efficiencies {efficiencies}, {per_layer * 1e3:.1f} ms per layer-step"
    if quick:
        console.print(f"{summary} (quick mode: {calibration_file(backend)} left unchanged)")
        return
    path = calibration_file(backend)
    path.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    console.print(f"{summary} -> {path}")


if __name__ == "__main__":
    main()
