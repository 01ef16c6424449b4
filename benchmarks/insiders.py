"""Insiders: what compromised enrolled devices take away from the model, attack by attack, with and without the
robust aggregation rules (``fedge.coordinator.robust``).

Every run is a field trial as ``fedge trial`` runs it (embedded broker, the coordinator and one process per agent,
signed messages) on the default trial's fleet, data split and budget (``examples/trial.yaml``), with one strategy
(HetLoRA, the coordinator's default). The first devices of the fleet are compromised
(``fedge.shell.trial.insider``: sign flip with an inflated example count, the same scaled ×200, a constant
direction, a small consistent bias). Two fleets: the trial's four devices with one insider, and ten devices (the
trial's kinds in turn, the same data source split ten ways) with two. Each attack runs under

- ``today``: the rules before robust aggregation (plain weighted mean, ``max_weight_share`` 0.5, no norm bound
  beyond ``max_update_norm``);
- ``default``: the robust rules as they ship.

A third reference run per fleet says what the honest devices reach alone: the sign flip with the insiders
quarantined after their first round (``quarantine_after: 1``), so the rest of the run never sees them. No defence
can do better than that by much, since the insiders' own data is lost with their updates.

It prints each run's final held-out accuracy, its difference from the clean run under today's rules (the goal:
every attacked run within 2 points of it, and the default's clean run within 1) and, for the default's attacked
runs, from the honest devices alone (what a defence that lost nothing but the insiders' data would reach), and
writes ``insiders.json`` beside the runs. ``--report FILE`` prints the table again from a saved ``insiders.json``.

    python benchmarks/insiders.py [--quick] [--fleets 4,10] [--attacks sign_flip,scale,constant,bias] [--out DIR] [--report FILE]

``--quick`` runs the four-device fleet only, one round, the sign flip only, on less data: the plumbing, not the
figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedge.shell.trial.config import StrategyRun, TrialConfig
from fedge.shell.trial.insider import ATTACKS
from fedge.shell.trial.runner import run_trial

ROOT = Path(__file__).resolve().parents[1]
TODAY = {"combiner": "mean", "norm_multiple": 0, "share_factor": 1000, "quarantine_after": 0}  # the weighted mean under max_weight_share alone
RULES = {"today": TODAY, "default": {}, "without": {"quarantine_after": 1}}
console = Console(width=140)


def fleet_of(trial: TrialConfig, size: int) -> tuple[str, ...]:
    return tuple(trial.fleet[index % len(trial.fleet)] for index in range(size))


def final_accuracy(run_dir: Path) -> float:
    records = [json.loads(line) for line in next(run_dir.glob("seed_*/*/coordinator/metrics.jsonl")).read_text().splitlines() if line.strip()]
    return float(records[-1]["accuracy"])


def outliers_named(run_dir: Path) -> list[str]:
    records = [json.loads(line) for line in next(run_dir.glob("seed_*/*/coordinator/metrics.jsonl")).read_text().splitlines() if line.strip()]
    return sorted({agent for record in records for agent in (record.get("robust") or {}).get("outliers", ())})


def one_run(base: TrialConfig, size: int, insiders: int, attack: str | None, rules: str, out: Path) -> dict:
    trial = replace(base, name=f"insiders-{size}-{attack or 'clean'}-{rules}", fleet=fleet_of(base, size), robust=RULES[rules],
                    insiders={"count": insiders, "attack": attack} if attack else {}, centralised=False, virtual_fleet=())
    run_dir = out / f"fleet{size}_{attack or 'clean'}_{rules}"
    started = time.time()
    with (out / f"{run_dir.name}.log").open("w") as log:
        run_trial(trial, run_dir, Console(file=log, width=140))
    result = {"fleet": size, "insiders": insiders if attack else 0, "attack": attack or "clean", "rules": rules, "accuracy": final_accuracy(run_dir), "outliers": outliers_named(run_dir), "wall_s": round(time.time() - started, 1)}
    console.print(f"fleet of {size}, {result['attack']}, {rules} rules: accuracy {result['accuracy']:.3f}, outliers named {result['outliers']} ({result['wall_s']:.0f} s)")
    return result


def report(results: list[dict]) -> Table:
    table = Table(title="Final held-out accuracy with compromised devices (differences in points: from the clean run under today's rules, "
                        "and from the honest devices alone)")
    for header in ("fleet", "attack", "today", "Δ clean", "default", "Δ clean", "Δ honest alone", "outliers named (default)"):
        table.add_column(header, justify="left" if header in ("attack", "outliers named (default)") else "right")
    for size in sorted({r["fleet"] for r in results}):
        rows = {(r["attack"], r["rules"]): r for r in results if r["fleet"] == size}
        clean, alone = rows.get(("clean", "today")), rows.get(("sign_flip", "without"))

        def cells(run: dict | None, *references: dict | None) -> list[str]:
            if run is None:
                return ["—"] * (1 + len(references))
            return [f"{run['accuracy']:.3f}", *("—" if reference is None else f"{100 * (run['accuracy'] - reference['accuracy']):+.1f}" for reference in references)]

        insiders = max((r["insiders"] for r in rows.values()), default=0)
        for attack in ["clean", *ATTACKS]:
            today, default = rows.get((attack, "today")), rows.get((attack, "default"))
            if today or default:
                label = f"{attack} ({insiders} of {size})" if attack != "clean" else "clean"
                table.add_row(str(size), label, *cells(today, clean), *cells(default, clean, None if attack == "clean" else alone),
                              ", ".join("-".join(agent.split("-")[:2]) for agent in (default or {}).get("outliers", [])) or "none")
        if alone is not None:
            table.add_row(str(size), f"honest devices alone ({insiders} left out after round 1)", "—", "—", *cells(alone, clean), "—", "")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trial", default=str(ROOT / "examples" / "trial.yaml"))
    parser.add_argument("--fleets", default="4,10", help="fleet sizes; a fifth of each (at least one) is compromised")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--rules", default="today,default")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--report", default=None, help="print the table of a saved insiders.json and stop")
    args = parser.parse_args()
    if args.report:
        console.print(report(json.loads(Path(args.report).read_text())))
        return
    base = TrialConfig.from_yaml(args.trial)
    base = replace(base, strategies=(StrategyRun("hetlora"),), seeds=base.seeds[:1])
    fleets, attacks, rules = [int(size) for size in args.fleets.split(",")], args.attacks.split(","), args.rules.split(",")
    if args.quick:
        base = replace(base, rounds=1, local_steps=4, data=replace(base.data, train_per_label=20, test_per_label=8))
        fleets, attacks = [4], ["sign_flip"]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for size in fleets:
            insiders = max(1, size // 5)
            plan = [(None, rule) for rule in rules] + [("sign_flip", "without")] + [(attack, rule) for attack in attacks for rule in rules]
            if args.quick:
                plan = [(None, "today"), ("sign_flip", "today"), ("sign_flip", "default")]
            for attack, rule in plan:
                results.append(one_run(base, size, insiders, attack, rule, out))
                (out / "insiders.json").write_text(json.dumps(results, indent=2))
        console.print(report(results))
        console.print(f"runs and insiders.json in {out}" if args.out else "")


if __name__ == "__main__":
    main()
