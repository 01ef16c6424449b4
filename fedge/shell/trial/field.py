"""A field trial on a real fleet: a trial's arms (strategies, server optimisers, FedProx, round modes), each run by
the coordinator over the agents connected to it, one after another, seed by seed. Every arm of a seed starts from
the same pretrained model with the same seed and waits for the same devices; the agents run their usual
``fedge agent`` command on their own data, and the final state of every arm but the last asks them to stay for the
next (``GlobalState.more_runs``). The report is ``fedge trial``'s, from the arms' own records.

    # arms.yaml: everything else (broker, fleet, task, rounds, steps, planner, robust rules) is the coordinator
    # config's; each arm sets its own algorithm, so an arm that names no server optimiser runs without one, and may set
    # its own HierFedLoRA `groups`
    name: my-fleet
    strategies: [hetlora, flexlora, {name: hetlora, server_optimizer: {name: fedavgm}, proximal_mu: 0.01, learning_rate: 0.004}]
    seeds: [0, 1, 2]
    baseline: hetlora        # what the report compares every other arm with, seed by seed
    target_accuracy: 0.6

    fedge coordinator --config coordinator.yaml --arms arms.yaml --out runs/field
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field
from rich.console import Console


from fedge.config_schema import ConfigError, Section, load_yaml, validated
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.config_schema import RoundModeFields
from fedge.shell.trial.config import ROUND_KEYS, StrategyItem, StrategyRun, TrialConfig, baseline_problems, run_problems, strategy_runs
from fedge.shell.trial.data import FIELD_SOURCE, TrialData
from fedge.shell.trial.report import write_report

ARM_DEFAULTS = {name: RoundModeFields.model_fields[name].default for name in ROUND_KEYS}  # an arm names its own round mode


@dataclass(frozen=True)
class FieldTrial:
    """The arms file: which runs, over which seeds, compared with which baseline."""

    strategies: tuple[StrategyRun, ...]
    name: str = "field"
    seeds: tuple[int, ...] = (0,)
    baseline: str = ""
    target_accuracy: float = 0.7

    @classmethod
    def from_yaml(cls, path: str | Path, config: CoordinatorConfig) -> FieldTrial:
        arms, errors = validated(ArmsFile, load_yaml(path, "arms file"))
        if arms is not None:
            trial = cls(strategy_runs(arms.strategies), arms.name, tuple(arms.seeds), arms.baseline, arms.target_accuracy)
            errors = run_problems(enumerate(trial.strategies), config.planner, config.privacy) + baseline_problems(trial.baseline, [run.label for run in trial.strategies], centralised=False)
            errors += ["seeds: each seed once"] if len(set(trial.seeds)) < len(trial.seeds) else []
        if errors:
            raise ConfigError(f"invalid arms file {path}:\n  " + "\n  ".join(errors))
        return trial


class ArmsFile(Section):
    """A field trial's arms (``fedge coordinator --config C --arms FILE``); the rest is the coordinator config's."""

    strategies: list[StrategyItem] = Field(min_length=1, description="the arms: strategy names, or mappings with options, round mode, server optimiser, FedProx μ, learning rate, groups")
    name: str = Field(FieldTrial.name, min_length=1, description="the field trial's name (its default output directory is runs/field-NAME)")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(list(FieldTrial.seeds), min_length=1, description="every arm runs once per seed, all over the same devices")
    baseline: str = Field(FieldTrial.baseline, description="the arm label every other arm is compared with, seed by seed; unset: the first arm")
    target_accuracy: float = Field(FieldTrial.target_accuracy, ge=0, le=1, description="the score the report counts rounds and bytes to")


def arm_config(config: CoordinatorConfig, trial: FieldTrial, run: StrategyRun, seed: int, run_dir: Path) -> CoordinatorConfig:
    """The coordinator config of one arm: the base config with the arm's algorithm, groups, seed, run id and directory."""
    slug = run.label.replace(" ", "_").replace("=", "-")
    base = config.to_dict()
    return CoordinatorConfig.from_dict({
        **base, **ARM_DEFAULTS, **run.rounds,
        "run_id": f"{trial.name}-{slug}-{seed}"[:128], "run_dir": str(run_dir / "coordinator"), "seed": seed,
        "strategy": run.name, "strategy_options": run.options, "server_optimizer": run.server_optimizer, "proximal_mu": run.proximal_mu,
        "learning_rate": run.learning_rate or config.learning_rate, "planner": run.planner(base["planner"]),
    })


def run_field_trial(config: CoordinatorConfig, trial: FieldTrial, out_dir: Path, console: Console) -> Path:
    """Run every (seed, arm) over the connected agents in turn and write the report; returns the report's path."""
    from fedge.coordinator.server import Coordinator

    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    arms = [(seed, run) for seed in trial.seeds for run in trial.strategies]
    runs, fleets = [], {}
    for index, (seed, run) in enumerate(arms):
        run_dir = out_dir / f"seed_{seed}" / run.label.replace(" ", "_").replace("=", "-")
        console.print(f"[bold]arm {index + 1}/{len(arms)}[/]: {run.label}, seed {seed} ({time.time() - started:.0f} s into the trial)")
        arm_started = time.time()
        try:
            Coordinator(arm_config(config, trial, run, seed, run_dir), more_runs=index < len(arms) - 1).run()
            status = 0
        except RuntimeError as error:  # too few agents came, or too few could train: the next arm may still run
            console.print(f"[red]{run.label} seed {seed}: {error}[/]")
            status = 1
        (run_dir / "wall_s").write_text(f"{time.time() - arm_started:.1f}\n")
        fleets[(seed, run.label)] = planned_devices(run_dir)
        runs.append({"strategy": run.label, "name": run.name, "seed": seed, "run_dir": str(run_dir), "exit": status})
    first = next((devices for devices in fleets.values() if devices), {})
    notes = [f"{label} seed {seed}: planned {', '.join(sorted(devices)) or 'no device'}, not the first arm's {', '.join(sorted(first))}"
             for (seed, label), devices in fleets.items() if devices and devices != first]
    report = write_report(report_trial(config, trial, first), runs, {}, {}, out_dir, time.time() - started, notes)
    console.print(report.table)
    console.print(f"report: [bold]{report.path}[/] (plots beside it); field trial wall time {time.time() - started:.0f} s")
    return report.path


def planned_devices(run_dir: Path) -> dict[str, str]:
    """Device id -> profile of every device an arm planned (empty when it never planned)."""
    plan = run_dir / "coordinator" / "plan.json"
    if not plan.exists():
        return {}
    return {device["device_id"]: device["profile_name"] for device in json.loads(plan.read_text())["devices"] if device["feasible"]}


def report_trial(config: CoordinatorConfig, trial: FieldTrial, devices: dict[str, str]) -> TrialConfig:
    """The report's description of the field trial, in ``fedge trial``'s terms."""
    return TrialConfig(
        strategies=trial.strategies, fleet=tuple(f"{device} ({profile})" if profile else device for device, profile in sorted(devices.items())), name=trial.name,
        backbone=config.backbone, seeds=trial.seeds, rounds=config.rounds, local_steps=config.local_steps, batch_size=config.batch_size,
        learning_rate=config.learning_rate, data=TrialData(source=FIELD_SOURCE), task=config.task,
        planner={key: list(value) if isinstance(value, tuple) else value for key, value in config.planner.items()},  # as the YAML said it
        target_accuracy=trial.target_accuracy, baseline=trial.baseline, privacy=config.privacy,
    )
