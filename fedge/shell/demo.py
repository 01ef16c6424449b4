"""The main job: an embedded broker, a coordinator and a heterogeneous fleet of agents as separate processes.

Each agent simulates a catalogue device; the coordinator's capacity planner gives each its quantization, rank
profile, depth, batch and local steps from that device's figures, and the demo prints the plan. The data is WordNet
topic classification split non-IID (Dirichlet). At the end the demo trains a centralised LoRA on the pooled data with
the same step budget, for comparison, and prints the table.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedge.coordinator.live_server import LIVE_FILE
from fedge.coordinator.plan_report import plan_table
from fedge.coordinator.plans import Pin, PlannerOptions
from fedge.coordinator.reports import RunDirectory
from fedge.broker import EmbeddedBroker
from fedge.trust.enrolment import device_credentials_path, temporary_fleet
from fedge.shell.processes import JsonLines, children, spawn, stop
from fedge.shell.progress import long_step
from fedge.task.data import write_jsonl
from fedge.task.split import dirichlet_split, label_histogram
from fedge.task.wordnet import LABELS, WORDNET_TASK, load_splits
from fedge.quantization.backbone import DEFAULT_BACKBONE, locate_backbone

log = logging.getLogger(__name__)

# Simulated devices (catalogue names). All of them really run on this machine's CPU; the planner plans for the
# device each one claims to be. The caps keep the demo within minutes on two cores.
FLEET = ("laptop-rtx3060-6gb", "jetson-orin-nano-8gb", "cpu-16gb", "cpu-8gb")
PLANNER = {"max_depth": 6, "ranks": [4, 8, 16]}


@dataclass(frozen=True)
class DemoSettings:
    run_dir: Path
    rounds: int = 6
    local_steps: int = 10
    agents: int = 4
    train_per_label: int = 80
    test_per_label: int = 40
    alpha: float = 0.5
    seed: int = 0
    batch_size: int = 16
    learning_rate: float = 2e-3


def _fleet(count: int) -> list[tuple[str, str]]:
    """(agent id, catalogue device) for ``count`` agents, cycling through ``FLEET``."""
    return [(f"agent-{i}-{FLEET[i % len(FLEET)]}", FLEET[i % len(FLEET)]) for i in range(count)]


def prepare(settings: DemoSettings, broker_url: str, fleet_dir: Path) -> tuple[Path, list[tuple[str, str, Path]]]:
    """Write the data shards and the coordinator config (for the fleet enrolled in ``fleet_dir``); returns the
    config path and (agent, device, shard)."""
    data_dir = settings.run_dir / "data"
    train, test = load_splits(settings.train_per_label, settings.test_per_label, settings.seed)
    fleet = _fleet(settings.agents)
    shards = dirichlet_split(train, len(fleet), settings.alpha, settings.seed)
    agents = []
    for (agent_id, device), shard in zip(fleet, shards):
        path = data_dir / f"{agent_id}.jsonl"
        write_jsonl(path, shard)
        agents.append((agent_id, device, path))
    write_jsonl(data_dir / "test.jsonl", test)
    write_jsonl(data_dir / "train_pooled.jsonl", train)
    (data_dir / "split.json").write_text(json.dumps({
        "alpha": settings.alpha, "seed": settings.seed, "labels": list(LABELS),
        "histograms": {agent_id: label_histogram(shard, len(LABELS)) for (agent_id, _), shard in zip(fleet, shards)},
    }, indent=2))
    config = {
        "run_id": f"demo-{int(time.time())}",
        "run_dir": str(settings.run_dir / "coordinator"),
        "broker": broker_url,
        "enrolment": str(fleet_dir),
        "backbone": DEFAULT_BACKBONE,
        "eval_data": str(data_dir / "test.jsonl"),
        "rounds": settings.rounds,
        "min_clients": max(1, len(fleet) // 2),
        "expected_clients": len(fleet),
        "local_steps": settings.local_steps,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "planner": PLANNER,
    }
    config_path = settings.run_dir / "coordinator.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path, agents


def centralised_baseline(settings: DemoSettings, pooled: Path, test: Path, plan: Pin, scaling: float, console: Console) -> list[float]:
    """LoRA on the pooled data with the same number of steps as the federation; accuracy after each 'round'."""
    from fedge.shell.trial.centralised import centralised_scores

    def on_round(round_number: int, accuracy: float, loss: float) -> None:
        if round_number:
            console.print(f"centralised round {round_number}: accuracy {accuracy:.3f}")

    records = centralised_scores(
        DEFAULT_BACKBONE, WORDNET_TASK, pooled, test, settings.rounds, settings.local_steps, settings.batch_size,
        settings.learning_rate, plan.depth, plan.rank, scaling, settings.seed, on_round,
    )
    return [record["accuracy"] for record in records[1:]]


def run_demo(settings: DemoSettings, console: Console) -> int:
    started = time.time()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.run_dir / "logs"
    logs.mkdir(exist_ok=True)
    with long_step(console, "locating the SmolLM2-135M-Instruct backbone (first run converts the GGUF, ~40 s)"):
        locate_backbone(DEFAULT_BACKBONE)
    metrics_file = settings.run_dir / "coordinator" / "metrics.jsonl"
    with temporary_fleet(agent_id for agent_id, _ in _fleet(settings.agents)) as fleet, EmbeddedBroker(fleet_dir=fleet) as broker, children() as running:
        config_path, agents = prepare(settings, broker.url, fleet)
        console.print(f"embedded broker on [bold]{broker.url}[/] (password logins and topic ACLs); {len(agents)} enrolled agents signing every message; run directory [bold]{settings.run_dir}[/]")
        console.print(f"logs: coordinator and agents in [bold]{logs}[/] (each agent logs its steps there)")
        coordinator = spawn(["coordinator", "--config", str(config_path)], logs / "coordinator.log")
        running.append(coordinator)
        workers = [spawn(["agent", "--broker", broker.url, "--data", str(shard), "--credentials", str(device_credentials_path(fleet, agent_id)), "--device-profile", device, "--threads", "1"], logs / f"{agent_id}.log") for agent_id, device, shard in agents]
        running.extend(workers)
        status = _follow(coordinator, workers, metrics_file, settings.rounds, console)
    if status != 0:
        console.print(f"[red]coordinator exited with {status}; see {logs}[/]")
        return status
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    planned = [device for device in json.loads((settings.run_dir / "coordinator" / "plan.json").read_text())["devices"] if device["feasible"]]
    widest = Pin(rank=max(max(d["ranks"]) for d in planned), depth=max(len(d["layers"]) for d in planned))
    with long_step(console, "centralised LoRA baseline on the pooled data (same steps)"):
        central = centralised_baseline(settings, settings.run_dir / "data" / "train_pooled.jsonl", settings.run_dir / "data" / "test.jsonl", widest, PlannerOptions().scaling, console)
    RunDirectory(settings.run_dir / "coordinator").plot({"centralised LoRA (pooled data)": [records[0]["accuracy"], *central]})
    _print_results(records, central, settings, console, time.time() - started)
    (settings.run_dir / "summary.json").write_text(json.dumps({
        "federated_accuracy": [r["accuracy"] for r in records], "centralised_accuracy": central, "wall_s": round(time.time() - started, 1),
    }, indent=2))
    return 0


def _follow(coordinator: subprocess.Popen, workers: list[subprocess.Popen], metrics_file: Path, rounds: int, console: Console) -> int:
    """Show where the live fleet page is and the capacity plan once it is made, then a progress bar per round from the coordinator's metrics until
    it exits; then stop the agents."""
    plan_shown = live_shown = False
    plan_file, live_file = metrics_file.with_name("plan.json"), metrics_file.with_name(LIVE_FILE)
    metrics = JsonLines(metrics_file)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"), TimeElapsedColumn(), console=console)
    with progress:
        task = progress.add_task("agents loading the backbone and caching their data", total=rounds)
        while coordinator.poll() is None:
            time.sleep(0.5)
            if not live_shown and live_file.exists():
                progress.console.print(f"live fleet page: [bold]{json.loads(live_file.read_text())['url']}[/] (each device's state, plan and progress; Prometheus metrics at /metrics)")
                live_shown = True
            if not plan_shown and plan_file.exists():
                progress.console.print(plan_table(json.loads(plan_file.read_text()), per_device=True))
                plan_shown = True
            for record in metrics.new_records():
                label = "before fine-tuning" if record["round"] == 0 else f"round {record['round']}"
                progress.console.print(f"{label}: accuracy [bold]{record['accuracy']:.3f}[/], loss {record['loss']:.3f}" + (f", {len(record['contributors'])} updates, {record['wall_s']:.1f} s" if record["round"] else ""))
                progress.update(task, completed=record["round"], description=f"federated rounds (accuracy {record['accuracy']:.3f})")
    stop(workers)
    return coordinator.returncode


def _print_results(records: list[dict], central: list[float], settings: DemoSettings, console: Console, wall_s: float) -> None:
    table = Table(title="Held-out accuracy (8-way WordNet topic classification, chance 0.125)")
    table.add_column("round")
    table.add_column(f"federated ({len(_fleet(settings.agents))} planned agents)", justify="right")
    table.add_column("centralised LoRA (pooled data)", justify="right")
    table.add_column("bytes up / down (all agents)", justify="right")
    for record in records:
        r = record["round"]
        up, down = sum(record.get("bytes_up", {}).values()), sum(record.get("bytes_down", {}).values())
        table.add_row(
            "before" if r == 0 else str(r),
            f"{record['accuracy']:.3f}",
            f"{records[0]['accuracy']:.3f}" if r == 0 else f"{central[r - 1]:.3f}",
            "—" if r == 0 else f"{up / 1e6:.2f} MB / {down / 1e6:.2f} MB",
        )
    console.print(table)
    console.print(f"run directory: [bold]{settings.run_dir}[/] (metrics.jsonl, adapter/, metrics.png under coordinator/); wall time {wall_s:.0f} s")
