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

from fit_calibration import Sample, fit_calibration, summary
from measure_training import ALL, QV, THREADS, describe, measure, start, top_setup

from fedge.profiles.calibration import calibration_file
from fedge.profiles.model_shape import load_model_shape
from fedge.profiles.probe import matmul_gflops

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
    samples = []
    for setup in plain_set + bitsandbytes_set:
        started = time.perf_counter()
        result = measure(setup, backend)
        console.print(f"  {describe(setup):45s} peak {result['peak_bytes'] / 2**20:7.0f} MiB, {result['step_seconds']:6.2f} s/step ({time.perf_counter() - started:.0f} s)")
        samples.append(Sample(shape, setup, describe(setup), result["peak_bytes"], result["step_seconds"]))
    note = f"Fitted by benchmarks/calibrate.py on {platform.machine()} {platform.processor() or ''}, {THREADS} threads, {time.strftime('%Y-%m-%d')}; efficiencies are shares of the probed matmul rate."
    calibration = fit_calibration(backend, samples[: len(plain_set)], samples[len(plain_set):], gflops, note)
    if quick:
        console.print(f"{summary(calibration)} (quick mode: {calibration_file(backend)} left unchanged)")
        return
    path = calibration_file(backend)
    path.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")
    console.print(f"{summary(calibration)} -> {path}")


if __name__ == "__main__":
    main()
