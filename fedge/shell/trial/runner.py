"""Runs a field trial: every listed strategy on the same simulated fleet, the same data split and the same seeds,
each over its own embedded broker with the coordinator and one process per agent (one thread each), and optionally
the centralised reference on the pooled shards."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fedge.broker import EmbeddedBroker
from fedge.trust.enrolment import device_credentials_path, temporary_fleet
from fedge.shell.processes import JsonLines, children, spawn, stop
from fedge.shell.progress import long_step
from fedge.strategies import STRATEGIES
from fedge.shell.trial.config import StrategyRun, TrialConfig
from fedge.shell.trial.data import prepare_data
from fedge.shell.trial.report import write_report
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.plans import PlannerOptions
from fedge.coordinator.planner import plan_fleet
from fedge.shell.trial.virtual import RoundSettings, simulate, virtual_members
from fedge.profiles.model_shape import load_model_shape
from fedge.quantization.backbone import locate_backbone

CENTRAL_DEPTH, CENTRAL_RANK = 4, 16  # the centralised adapter where the trial's planner sets no max_depth or ranks


def agent_ids(trial: TrialConfig) -> list[str]:
    return [f"agent-{index}-{device}" for index, device in enumerate(trial.fleet)]


def coordinator_config(trial: TrialConfig, run: StrategyRun, seed: int, data: Path, run_dir: Path, broker_url: str, fleet_dir: Path) -> dict:
    planner = dict(run.planner(trial.planner))
    if not STRATEGIES[run.name].mixed_ranks:  # e.g. FedIT: one rank for everyone, said in the report
        planner.update(ranks=[trial.same_rank], rank_profile="uniform")
    return {
        "run_id": f"{trial.name}-{run.name}-{seed}", "run_dir": str(run_dir), "broker": broker_url, "enrolment": str(fleet_dir), "backbone": trial.backbone,
        "eval_data": str(data / "test.jsonl"), "task": {**asdict(trial.task_spec), "labels": list(trial.task_spec.labels)}, "rounds": trial.rounds, "min_clients": len(trial.fleet), "expected_clients": len(trial.fleet),
        "local_steps": trial.local_steps, "batch_size": trial.batch_size, "learning_rate": run.learning_rate or trial.learning_rate, "seed": seed,
        "strategy": run.name, "strategy_options": run.options, "planner": planner,
        "round_deadline_s": trial.round_deadline_s, "final_eval_wait_s": 120 if devices_evaluate(trial, run) else 0,
        **({"privacy": trial.privacy} if trial.privacy else {}),
        **({"robust": trial.robust} if trial.robust else {}),
        **({"server_optimizer": run.server_optimizer} if run.server_optimizer else {}),
        **({"proximal_mu": run.proximal_mu} if run.proximal_mu else {}),
        **run.rounds,
    }


def devices_evaluate(trial: TrialConfig, run: StrategyRun) -> bool:
    """Whether the devices report their own held-out accuracy in this run."""
    return trial.device_eval == "all" or (trial.device_eval == "auto" and not STRATEGIES[run.name].has_global_model)


def run_trial(trial: TrialConfig, out_dir: Path, console: Console) -> Path:
    """Run every (seed, strategy) pair in turn and write the report; returns the report's path. A run that an
    earlier invocation finished in ``out_dir`` with the same settings and split is kept, not run again: an
    interrupted trial picks up where it stopped, and arms added to a trial run alone."""
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trial.json").write_text(json.dumps(asdict(trial), indent=2, default=list))
    with long_step(console, f"locating the backbone {trial.backbone}"):
        locate_backbone(trial.backbone)
    splits, runs, centralised, kept = {}, [], {}, 0
    total = len(trial.seeds) * (len(trial.strategies) + trial.centralised) * trial.rounds
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"), TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("trial", total=total)
        for seed in trial.seeds:
            data = out_dir / f"seed_{seed}" / "data"
            earlier = json.loads((data / "split.json").read_text()) if (data / "split.json").exists() else None
            splits[seed] = prepare_data(trial.data, trial.task_spec, agent_ids(trial), seed, data)
            same_split = earlier == json.loads((data / "split.json").read_text())
            if trial.centralised:
                centralised[seed] = _centralised(trial, seed, data, progress, task, same_split)
            for run in trial.strategies:
                run_dir = out_dir / f"seed_{seed}" / run.label.replace(" ", "_").replace("=", "-")
                if same_split and finished_run(trial, run, seed, data, run_dir):
                    progress.console.print(f"seed {seed} {run.label}: finished by an earlier invocation with these settings; kept")
                    progress.update(task, advance=trial.rounds)
                    status, kept = 0, kept + 1
                else:
                    status = _run_one(trial, run, seed, data, run_dir, progress, task)
                if trial.virtual_fleet and seed == trial.seeds[0]:
                    _clock_virtual_fleet(trial, run_dir)
                runs.append({"strategy": run.label, "name": run.name, "seed": seed, "run_dir": str(run_dir), "exit": status})
    report = write_report(trial, runs, splits, centralised, out_dir, time.time() - started, kept=kept)
    console.print(report.table)
    console.print(f"report: [bold]{report.path}[/] (plots beside it); trial wall time {time.time() - started:.0f} s")
    return report.path


def finished_run(trial: TrialConfig, run: StrategyRun, seed: int, data: Path, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds this very run, finished: the coordinator settings it would get now (its broker and
    fleet aside, which are each invocation's own, and the paths inside the trial's directory, which follow where the
    directory is and how ``--out`` spelt it; the split itself is compared by the caller) and every round recorded."""
    config, metrics = run_dir / "coordinator.yaml", run_dir / "coordinator" / "metrics.jsonl"
    if not (config.exists() and metrics.exists() and (run_dir / "wall_s").exists()):
        return False
    own = ("broker", "enrolment", "run_dir", "eval_data")
    saved = {key: value for key, value in (yaml.safe_load(config.read_text()) or {}).items() if key not in own}
    wanted = {key: value for key, value in coordinator_config(trial, run, seed, data, run_dir / "coordinator", "", Path()).items() if key not in own}
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines() if line.strip()]
    return saved == yaml.safe_load(yaml.safe_dump(wanted)) and bool(rounds) and max(rounds) == trial.rounds


def _clock_virtual_fleet(trial: TrialConfig, run_dir: Path) -> None:
    """The virtual fleet planned with the settings the run's coordinator had, and clocked (``fedge.shell.trial.virtual``):
    ``virtual.json``."""
    config = CoordinatorConfig.from_yaml(run_dir / "coordinator.yaml")
    members = virtual_members(list(trial.virtual_fleet))
    plan = plan_fleet(members, load_model_shape(str(locate_backbone(trial.backbone).directory)), config.planner_options())
    clocked = simulate(plan.devices, members, trial.rounds, RoundSettings(config.round_mode, config.buffer_size, config.max_staleness, config.aggregation_period_s))
    (run_dir / "virtual.json").write_text(json.dumps(asdict(clocked) | {"round_seconds": clocked.round_seconds}, indent=2))


def _centralised(trial: TrialConfig, seed: int, data: Path, progress: Progress, task, same_split: bool) -> list[dict]:
    """The centralised reference for one seed, written beside the seed's runs (``centralised.json``, its settings
    in ``centralised.settings.json``); kept from an earlier invocation with the same settings and split."""
    from fedge.shell.trial.centralised import centralised_scores

    planner = trial.planner
    settings = {"backbone": trial.backbone, "task": asdict(trial.task_spec), "rounds": trial.rounds, "steps_per_round": trial.local_steps * len(trial.fleet), "batch_size": trial.batch_size,
                "learning_rate": trial.learning_rate, "depth": planner.get("max_depth") or CENTRAL_DEPTH, "rank": max(planner.get("ranks") or [CENTRAL_RANK]),
                "scaling": planner.get("scaling", PlannerOptions.scaling), "seed": seed}
    saved, settings_file = data.parent / "centralised.json", data.parent / "centralised.settings.json"
    if same_split and saved.exists() and settings_file.exists() and json.loads(settings_file.read_text()) == json.loads(json.dumps(settings)):
        progress.console.print(f"seed {seed} centralised: finished by an earlier invocation with these settings; kept")
        progress.update(task, advance=trial.rounds)
        return json.loads(saved.read_text())
    done_before = progress.tasks[task].completed
    started = time.time()

    def on_round(round_number: int, score: float, loss: float) -> None:
        progress.console.print(f"seed {seed} centralised: round {round_number} {trial.metric} {score:.3f}, loss {loss:.3f}, {time.time() - started:.0f} s")
        progress.update(task, completed=done_before + round_number, description=f"seed {seed} centralised ({time.time() - started:.0f} s)")

    records = centralised_scores(
        trial.backbone, trial.task_spec, data / "train_pooled.jsonl", data / "test.jsonl", trial.rounds, settings["steps_per_round"],
        trial.batch_size, trial.learning_rate, settings["depth"], settings["rank"], settings["scaling"], seed, on_round,
    )
    saved.write_text(json.dumps(records, indent=2))
    settings_file.write_text(json.dumps(settings, indent=2))
    return records


def _run_one(trial: TrialConfig, run: StrategyRun, seed: int, data: Path, run_dir: Path, progress: Progress, task) -> int:
    shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted or differently set earlier run left
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with temporary_fleet(agent_ids(trial)) as fleet, EmbeddedBroker(fleet_dir=fleet) as broker, children() as running:
        config_path = run_dir / "coordinator.yaml"
        config_path.write_text(yaml.safe_dump(coordinator_config(trial, run, seed, data, run_dir / "coordinator", broker.url, fleet), sort_keys=False))
        coordinator = spawn(["coordinator", "--config", str(config_path)], logs / "coordinator.log")
        running.append(coordinator)
        evaluation = ["--eval-data", str(data / "test.jsonl")] if devices_evaluate(trial, run) else []
        agents = [spawn(["agent", "--broker", broker.url, "--data", str(data / f"{agent_id}.jsonl"), *evaluation, "--credentials", str(device_credentials_path(fleet, agent_id)), "--device-profile", device, "--threads", "1", "--slowdown", str(trial.slowdown.get(device, 1))], logs / f"{agent_id}.log",
                        ("fedge.shell.trial.run_insider", trial.insiders["attack"]) if index < trial.insider_count else ("fedge.shell.cli",))
                  for index, (agent_id, device) in enumerate(zip(agent_ids(trial), trial.fleet))]
        running.extend(agents)
        metrics = JsonLines(run_dir / "coordinator" / "metrics.jsonl")
        done_before = progress.tasks[task].completed
        while coordinator.poll() is None:
            time.sleep(1.0)
            for record in metrics.new_records():
                if record["round"]:
                    progress.console.print(f"seed {seed} {run.label}: round {record['round']} server {trial.metric} {record['accuracy']:.3f}, loss {record['loss']:.3f}, {record['wall_s']:.0f} s")
                    progress.update(task, completed=done_before + record["round"])
            progress.update(task, description=f"seed {seed} {run.label} ({time.time() - started:.0f} s)")
        stop(agents)
    progress.update(task, completed=done_before + trial.rounds)
    (run_dir / "wall_s").write_text(f"{time.time() - started:.1f}\n")
    if coordinator.returncode != 0:
        progress.console.print(f"[red]{run.label} seed {seed}: coordinator exited with {coordinator.returncode}; see {logs}[/]")
    return coordinator.returncode
