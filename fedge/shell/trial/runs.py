"""One finished trial run read back from its coordinator's records: the headline metric per round (global model and
the devices' mean), bytes, times (this host's, and the plan's on the real devices) and the plan's ranks."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunResult:
    strategy: str
    seed: int
    server_accuracy: list[float]  # index = round, 0 = before fine-tuning
    server_loss: list[float]
    device_accuracy: list[float]  # index = round; NaN where no device reported
    bytes_up: list[int]  # per round, all clients
    bytes_down: list[int]
    clients: int
    server_s: float
    wall_s: float
    ranks: dict[str, str]
    elapsed_s: list[float]  # index = round: seconds since the first round began (0 for round 0)
    planned_round_s: float = math.nan  # the plan's global round on the real devices: its slowest device, or slowest group

    @property
    def planned_s(self) -> list[float]:
        """Index = round: the planned seconds on the real devices since the first round began."""
        return [index * self.planned_round_s for index in range(len(self.server_accuracy))]

    @property
    def primary(self) -> list[float]:
        return self.device_accuracy if all(math.isnan(a) for a in self.server_accuracy[1:]) else self.server_accuracy


def load_run(strategy: str, seed: int, run_dir: Path) -> RunResult:
    coordinator = run_dir / "coordinator"
    rounds = [json.loads(line) for line in (coordinator / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [json.loads(line) for line in (coordinator / "client_eval.jsonl").read_text().splitlines()] if (coordinator / "client_eval.jsonl").exists() else []
    device = [statistics.fmean([e["accuracy"] for e in evals if e["round"] == r["round"]] or [math.nan]) for r in rounds]
    plan = json.loads((coordinator / "plan.json").read_text()) if (coordinator / "plan.json").exists() else {"devices": []}
    ranks = {d["device_id"]: f"D{len(d['layers'])} r{'/'.join(map(str, sorted(set(d['ranks']), reverse=True)))}" for d in plan["devices"] if d["feasible"]}
    later = rounds[1:]
    return RunResult(
        strategy, seed,
        [r["accuracy"] for r in rounds], [r["loss"] for r in rounds], device,
        [sum(r.get("bytes_up", {}).values()) for r in later], [sum(r.get("bytes_down", {}).values()) for r in later],
        max(len(r.get("participants", [])) for r in rounds) or 1,
        sum(r.get("server_aggregate_s", 0.0) for r in later),
        float((run_dir / "wall_s").read_text()) if (run_dir / "wall_s").exists() else math.nan,
        ranks,
        [0.0] + [r.get("elapsed_s", math.nan) for r in later],
        planned_round_seconds(plan),
    )


def planned_round_seconds(plan: dict) -> float:
    """A plan's global round on the real devices: the slowest HierFedLoRA group's τ_g exchanges, else the slowest
    feasible device's round (NaN for an empty plan)."""
    times = [group["round_seconds"] for group in plan.get("groups", [])] or [device["round_seconds"] for device in plan["devices"] if device["feasible"]]
    return max(times, default=math.nan)
