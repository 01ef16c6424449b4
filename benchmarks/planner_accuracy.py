"""Check the calibrated memory and time models against real training runs the calibration never saw.

    python benchmarks/planner_accuracy.py [--backend cpu|cuda] [--quick]

For each configuration below (fresh process each, SmolLM2-135M, fedge's own trainer) it prints the predicted and
measured peak memory and step time with the relative error. The baseline is the same model uncalibrated (no
framework overhead, activation factor 1, efficiency 1: the textbook counts alone), measured in the same run.
Exit status 1 when any memory prediction is off by more than 15%.
"""

from __future__ import annotations

import sys

from measure_training import ALL, QV, THREADS, describe, measure, start, top_setup
from rich.table import Table

from fedge.profiles.calibration import Calibration, load_calibration
from fedge.profiles.memory import predict_memory
from fedge.profiles.model_shape import load_model_shape
from fedge.profiles.probe import matmul_gflops
from fedge.profiles.timing import predict_step_seconds

TOLERANCE = 0.15
ACCURACY_SET = [
    top_setup("fp32", 4, 3, QV, 16, 48, examples=256),
    top_setup("fp32", (16, 16, 8, 8, 4, 4), 6, QV, 32, 48, examples=128),
    top_setup("fp32", 16, 10, ALL, 8, 64),
    top_setup("fp32", 8, 20, QV, 8, 48),
    top_setup("fp32", 4, 30, QV, 4, 32, examples=32),
    top_setup("fp32", 16, 8, QV, 16, 96, checkpointing=True),
    top_setup("fp32", 64, 4, ALL, 16, 128),
    top_setup("fp32", (32,) * 5 + (16,) * 5 + (8,) * 4, 14, QV, 24, 64, optimizer="sgd", checkpointing=True),
    top_setup("fp32", 32, 2, QV, 48, 48, examples=256),
    top_setup("bf16", 8, 24, ALL, 2, 32, examples=8),
    top_setup("nf4", (16, 16, 8, 8, 4, 4), 6, QV, 16, 48, examples=128),
    top_setup("nf4", 8, 10, ALL, 8, 64),
    top_setup("fp32", 8, 4, QV, 8, 128, examples=64, answer_share=0.5),
    top_setup("fp32", 16, 8, ALL, 16, 256, examples=32, answer_share=0.25),
    top_setup("nf4", 8, 6, QV, 4, 512, examples=16, answer_share=0.75, checkpointing=True),
]
QUICK_SET = [ACCURACY_SET[0], ACCURACY_SET[-5], ACCURACY_SET[-3]]


def main() -> None:
    backend, quick, console = start(__doc__.split("\n")[0])
    calibration = load_calibration(backend)
    uncalibrated = Calibration.uncalibrated(calibration.efficiencies)
    shape = load_model_shape("smollm2-135m-instruct")
    gflops = matmul_gflops(2.0, device=backend)
    table = Table(title=f"Memory and time model vs measurement ({backend}, {THREADS} threads, matmul {gflops:.0f} GFLOP/s)")
    for column in ("configuration", "predicted MiB", "measured MiB", "error", "uncalibrated error", "predicted s/step", "measured s/step", "error"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    memory_errors, baseline_errors, time_errors = [], [], []
    for setup in QUICK_SET if quick else ACCURACY_SET:
        measured = measure(setup, backend)
        predicted = predict_memory(shape, setup, calibration).total
        textbook = predict_memory(shape, setup, uncalibrated).total
        seconds = predict_step_seconds(shape, setup, gflops, calibration)
        memory_errors.append(predicted / measured["peak_bytes"] - 1)
        baseline_errors.append(textbook / measured["peak_bytes"] - 1)
        time_errors.append(seconds / measured["step_seconds"] - 1)
        table.add_row(describe(setup), f"{predicted / 2**20:.0f}", f"{measured['peak_bytes'] / 2**20:.0f}", f"{memory_errors[-1]:+.1%}", f"{baseline_errors[-1]:+.1%}", f"{seconds:.2f}", f"{measured['step_seconds']:.2f}", f"{time_errors[-1]:+.1%}")
        console.print(f"  measured {describe(setup)}")
    console.print(table)

    def worst(errors: list[float]) -> float:
        return max(abs(e) for e in errors)

    console.print(f"memory: worst error {worst(memory_errors):.1%} (uncalibrated {worst(baseline_errors):.1%}); step time: worst error {worst(time_errors):.1%}")
    if worst(memory_errors) > TOLERANCE:
        console.print(f"[red]memory prediction outside ±{TOLERANCE:.0%}[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
