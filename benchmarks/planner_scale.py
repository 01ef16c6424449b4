"""How planning scales with the fleet: ``plan_fleet`` on N catalogue devices, every catalogue entry in turn.

Two fleets per N: one where devices of a model share a dataset size (13 kinds of device, whatever N), and one
where every device's dataset size differs (as a real fleet's do, so nearly every device is a kind of its own). Each
time is printed with its cost per device against the smallest N's in the same run (the baseline): a ratio near 1
is linear scaling; the planner before this benchmark re-planned the whole fleet at every balancing step (33 s for
100 devices). The target is 10,000 devices in 2 s.

Then the command a user runs: ``fedge plan FLEET.yaml`` on the largest fleet (a fleet file of catalogue entries with
counts), wall time from start to exit, against the same process's planning alone and against starting the command
with ``--help`` (the interpreter and imports): the target is 2 s of wall time for 10,000 devices.

    python benchmarks/planner_scale.py [--quick] [--sizes 100,1000,10000] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedge.coordinator.plans import FleetMember, PlannerOptions  # noqa: E402

from fedge.coordinator.costing import default_calibrations  # noqa: E402

from fedge.coordinator.planner import plan_fleet  # noqa: E402
from fedge.profiles import catalogue_names, load_catalogue_profile  # noqa: E402
from fedge.profiles.model_shape import load_model_shape  # noqa: E402

console = Console(width=160)


def fleet(size: int, distinct_sizes: bool) -> list[FleetMember]:
    names, rng = catalogue_names(), random.Random(size)
    return [FleetMember(f"d{index}", load_catalogue_profile(names[index % len(names)]), rng.randint(100, 5000) if distinct_sizes else 400) for index in range(size)]


def seconds_to_plan(members: list[FleetMember], model: str, repeats: int) -> tuple[float, int]:
    """The best of ``repeats`` planning times (a fresh process's memoised shape figures warm after the first), and
    how many devices can train."""
    shape, calibrations, options = load_model_shape(model), default_calibrations(), PlannerOptions(strategy="hetlora", max_depth=0, ranks=(4, 8, 16, 32))
    best, feasible = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        plan = plan_fleet(members, shape, options, calibrations)
        best, feasible = min(best, time.perf_counter() - started), len(plan.feasible())
    return best, feasible


def command_seconds(size: int, model: str) -> tuple[float, float]:
    """Wall seconds of ``fedge plan`` on a fleet file of ``size`` catalogue devices, and of ``fedge plan --help``."""
    names = catalogue_names()
    counts = [size // len(names) + (index < size % len(names)) for index in range(len(names))]
    with tempfile.TemporaryDirectory() as folder:
        fleet_file = Path(folder) / "fleet.yaml"
        fleet_file.write_text(f"model: {model}\nplanner: {{strategy: hetlora, ranks: [4, 8, 16, 32]}}\ndevices:\n" + "".join(f"  - {{device: {name}, count: {count}, examples: 400}}\n" for name, count in zip(names, counts) if count))
        timings = []
        for args in ([str(fleet_file)], ["--help"]):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fedge.shell.cli", "plan", *args], check=True, capture_output=True)
            timings.append(time.perf_counter() - started)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 devices")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [int(size) for size in args.sizes.split(",")]
    table = Table(title=f"plan_fleet on catalogue fleets ({args.model}, HetLoRA, every layer, ranks 4-32): best of 3")
    for column in ("devices", "dataset sizes", "kinds", "can train", "seconds", "µs per device", "per device vs the smallest fleet"):
        table.add_column(column, justify="right")
    for distinct in (False, True):
        baseline = None
        for size in sizes:
            members = fleet(size, distinct)
            seconds, feasible = seconds_to_plan(members, args.model, 3)
            per_device = seconds / size
            baseline = baseline or per_device
            kinds = len({(m.profile.name, m.num_examples) for m in members})
            table.add_row(f"{size:,}", "all different" if distinct else "shared", f"{kinds:,}", f"{feasible:,}", f"{seconds:.3f}", f"{per_device * 1e6:.0f}", f"{per_device / baseline:.2f}×")
    console.print(table)
    largest = max(sizes)
    seconds, startup = command_seconds(largest, args.model)
    planning, _ = seconds_to_plan(fleet(largest, False), args.model, 1)
    console.print(f"fedge plan on {largest:,} devices: {seconds:.2f} s wall (target 2 s), {seconds / startup:.2f}× starting the command (fedge plan --help, {startup:.2f} s); planning itself {planning:.3f} s")


if __name__ == "__main__":
    main()
