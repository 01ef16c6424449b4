"""Fleet scale: one coordinator process and Mosquitto against N simulated agents on this machine.

The agents (``benchmarks/swarm.py``, many per process, each its own MQTT connection, enrolled and signing like a
real agent) take every catalogue device in turn, with dataset sizes of 100 to 999 examples, and pretend to train
for ``--train-s`` seconds a round; the coordinator (``fedge coordinator`` in its own process) runs HetLoRA at
depth 1, rank 4, behind Mosquitto with the fleet's logins and ACLs. The straggler bound is relaxed (100×) so every
agent trains: at this tiny workload the CPU devices' predicted 0.1 s rounds are over 1.25× the GPUs' 0.04 s median,
and the planner would refuse a third of the fleet. Per fleet size it prints:

- registration: the coordinator's wait until every agent said hello (from its first round's record);
- planning: the planner over the registered fleet;
- round wall time against the pretend training time (their ratio is the baseline this benchmark reports against:
  1.0 would be a coordinator that costs nothing);
- server overhead per round: the last update sent to the last next global state received, as the agents saw it;
- the coordinator's CPU seconds and peak RSS (sampled every 0.2 s);
- how long messages waited between arriving and being handled (p50 and p99 over the rounds' records);
- the fan-out: CPU seconds spent converting, encoding and signing states per round, against the number of distinct
  states the round sent (devices with the same view share one), and how many times that work would be done with
  one encoding per device (planned devices ÷ distinct states);
- lost or late messages: planned agents whose update did not count in a round, with the reasons the round records
  give for each of them.

    python benchmarks/fleet_load.py [--quick] [--agents 100,1000,10000] [--rounds 3] [--train-s 5] [--processes 2]
                                    [--depth 1] [--rank 4] [--busy]

``--busy`` oversubscribes the machine for the whole measurement: ``stress-ng --cpu`` with twice as many workers as
cores, as a machine shared with other work is.

``--quick`` runs 20 agents for 2 rounds on a tiny random-weight model (the coordinator's evaluation of the real
one costs seconds a round, which is not fleet overhead). Without it the backbone is the demo's SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import psutil
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_model for --quick; benchmarks.swarm

from benchmarks.swarm import run_swarm  # noqa: E402
from tests.busy import HOG_WORKERS, have_stress_ng, oversubscribed  # noqa: E402
from fedge.broker import free_port  # noqa: E402
from fedge.shell.processes import children, spawn  # noqa: E402
from fedge.task.data import Example, write_jsonl  # noqa: E402
from fedge.task.wordnet import LABELS  # noqa: E402
from fedge.trust.broker_files import write_mosquitto_files  # noqa: E402
from fedge.trust.enrolment import Enrolment, enroll  # noqa: E402

console = Console(width=320)


def _eval_rows(path: Path) -> None:
    words = ["animal", "food", "plant", "time", "place", "body", "person", "substance"]
    write_jsonl(path, [Example(f"{words[i % 8]} of {words[(i * 3) % 8]}", i % len(LABELS)) for i in range(32)])


def _start_mosquitto(fleet: Path, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = next(path for path in write_mosquitto_files(Enrolment.load(fleet), work / "broker", port=port) if path.name == "mosquitto.conf")
    if os.geteuid() == 0:  # Mosquitto started as root drops to user "mosquitto", which cannot read the 0600 files
        conf.write_text(conf.read_text() + "user root\n")
    broker = subprocess.Popen([shutil.which("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=(work / "mosquitto.log").open("w"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return broker, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("mosquitto did not start")


def _coordinator_config(work: Path, fleet: Path, port: int, agents: int, rounds: int, backbone: str, deadline_s: float, heartbeat_s: float, depth: int, rank: int) -> Path:
    config = {
        "run_id": f"load-{agents}", "run_dir": str(work / "run"), "broker": f"mqtt://127.0.0.1:{port}?protocol=3.1.1",
        "enrolment": str(fleet), "backbone": backbone, "eval_data": str(work / "eval.jsonl"), "rounds": rounds,
        "strategy": "hetlora", "min_clients": 1, "expected_clients": agents, "registration_timeout_s": 60 + agents * 0.05,
        "round_deadline_s": deadline_s, "rejoin_grace_s": 3 * heartbeat_s, "final_eval_wait_s": 5, "threads": 1,
        "max_weight_share": 1.0, "planner": {"max_depth": depth, "ranks": [rank], "rank_profile": "uniform", "straggler_bound": 100},
    }
    path = work / "coordinator.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _await_line(log: Path, text: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the coordinator did not log {text!r}; see {log}")


def _sample(process: psutil.Process, until: subprocess.Popen) -> tuple[float, int]:
    """(CPU seconds, peak RSS) of the coordinator, sampled until it exits."""
    cpu, peak = 0.0, 0
    while until.poll() is None:
        try:
            times = process.cpu_times()
            cpu = times.user + times.system
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    return cpu, peak


def measure(agents: int, rounds: int, train_s: float, processes: int, backbone: str, heartbeat_s: float, work: Path, depth: int = 1, rank: int = 4) -> dict:
    work.mkdir(parents=True)
    ids = [f"sim-{index:05d}" for index in range(agents)]
    fleet = work / "fleet"
    started = time.perf_counter()
    enroll(fleet, ids)
    enrol_s = time.perf_counter() - started
    _eval_rows(work / "eval.jsonl")
    broker, port = _start_mosquitto(fleet, work)
    deadline_s = max(60.0, train_s * 4 + agents * 0.01)
    with children() as running:
        running.append(broker)
        coordinator = spawn(["coordinator", "--config", str(_coordinator_config(work, fleet, port, agents, rounds, backbone, deadline_s, heartbeat_s, depth, rank))], work / "coordinator.log")
        running.append(coordinator)
        _await_line(work / "coordinator.log", "listening for devices", coordinator)  # connected and subscribed
        context = multiprocessing.get_context("spawn")
        stop_after = 120 + agents * 0.05 + rounds * (deadline_s + 30)
        share = -(-agents // processes)
        swarms = [context.Process(target=run_swarm, args=(ids[i:i + share], i, str(fleet), "127.0.0.1", port, train_s, heartbeat_s, str(work / f"swarm-{i}.json"), stop_after)) for i in range(0, agents, share)]
        for swarm in swarms:
            swarm.start()
        try:
            cpu_s, peak_rss = _sample(psutil.Process(coordinator.pid), coordinator)
        finally:
            for swarm in swarms:
                swarm.join(timeout=60)
                if swarm.is_alive():
                    swarm.terminate()
    records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()] if (work / "run" / "metrics.jsonl").exists() else []
    agents_seen = [agent for path in work.glob("swarm-*.json") for agent in json.loads(path.read_text())]
    return _figures(agents, records, agents_seen, cpu_s, peak_rss, enrol_s, coordinator.returncode, work)


def _figures(agents: int, records: list[dict], seen: list[dict], cpu_s: float, peak_rss: int, enrol_s: float, exit_code: int | None, work: Path) -> dict:
    rounds = [record for record in records if record.get("round", 0) >= 1]
    first = rounds[0] if rounds else {}
    overheads = []
    for record in rounds[:-1]:  # the last update of round r in -> the last state of round r + 1 out
        this, following = str(record["round"]), str(record["round"] + 1)
        sent = [agent["update_sent"][this] for agent in seen if this in agent["update_sent"]]
        got = [agent["state_received"][following] for agent in seen if following in agent["state_received"]]
        if sent and got:
            overheads.append(max(got) - max(sent))
    lost = [len(record["participants"]) - len(record["contributors"]) for record in rounds]
    unexplained = [len(set(record["participants"]) - set(record["contributors"]) - set(record.get("left_out", {}))) for record in rounds]
    reasons: dict[str, int] = {}
    for record in rounds:
        for reason in record.get("left_out", {}).values():
            kind = reason.split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "agents": agents,
        "completed_rounds": len(rounds),
        "coordinator_exit": exit_code,
        "enrol_s": round(enrol_s, 2),
        "registration_s": first.get("registration_s"),
        "plan_s": first.get("plan_s"),
        "prepare_s": first.get("prepare_s"),
        "planned": len(first.get("participants", [])),
        "refused": sum(1 for agent in seen if agent["rejects"].get("infeasible")),
        "round_wall_s": [record["wall_s"] for record in rounds],
        "overhead_s": [round(value, 2) for value in overheads],
        "cpu_s": round(cpu_s, 1),
        "peak_rss_mib": round(peak_rss / 2**20),
        "lost_per_round": lost,
        "lost_reasons": reasons,
        "lost_without_reason": unexplained,
        "message_wait_p50_s": max((record["message_wait_s"]["p50"] for record in rounds), default=None),
        "message_wait_p99_s": max((record["message_wait_s"]["p99"] for record in rounds), default=None),
        "fanout_cpu_s": [record["fanout"]["cpu_s"] for record in rounds],
        "distinct_states": [record["fanout"]["distinct_states"] for record in rounds],
        "unreadable_downlinks": sum(agent["unreadable"] for agent in seen),
        "never_connected": sum(1 for agent in seen if not agent["connected"]),
        "log": str(work / "coordinator.log"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--agents", default="100,1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-s", type=float, default=5.0)
    parser.add_argument("--heartbeat-s", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2, help="processes the simulated agents share")
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--depth", type=int, default=1, help="adapted layers (depth 8 at rank 32: ~1 MB updates)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--busy", action="store_true", help="oversubscribe the CPU (stress-ng, 2 workers per core) while measuring")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.busy and not have_stress_ng():
        raise SystemExit("--busy needs stress-ng (apt-get install stress-ng)")
    sizes = [20] if args.quick else [int(size) for size in args.agents.split(",")]
    rounds, train_s = (2, 1.0) if args.quick else (args.rounds, args.train_s)
    results = []
    with tempfile.TemporaryDirectory(prefix="fedge-fleet-load-") as scratch, (oversubscribed() if args.busy else nullcontext()):
        backbone = args.backbone
        if args.quick:
            from tests.tiny_model import build_tiny_backbone

            backbone = str(build_tiny_backbone(Path(scratch) / "tiny"))
        for size in sizes:
            console.print(f"{size:,} agents: enrolling, starting Mosquitto, the coordinator and {args.processes} swarm processes…")
            figures = measure(size, rounds, train_s, args.processes, backbone, args.heartbeat_s, Path(scratch) / f"n{size}", args.depth, args.rank)
            results.append(figures)
            console.out(json.dumps(figures), highlight=False)  # one unwrapped line: tests and scripts parse it
            if figures["completed_rounds"] < rounds:
                console.print(f"[red]{size:,} agents: {figures['completed_rounds']} of {rounds} rounds completed[/]; coordinator log tail:")
                console.print(Path(figures["log"]).read_text()[-3000:])
    _print(results, train_s, args.busy)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if any(figures["completed_rounds"] < rounds for figures in results):
        sys.exit(1)


def _print(results: list[dict], train_s: float, busy: bool) -> None:
    load = f"CPU oversubscribed ({HOG_WORKERS} stress-ng workers)" if busy else "no other load started"
    table = Table(title=f"One coordinator and Mosquitto on this machine, {load}; simulated agents pretend to train {train_s:g} s a round (HetLoRA)")
    for column in ("agents", "planned / refused", "registration", "planning", "round wall (× training)", "server overhead per round", "message wait p50 / p99", "fan-out CPU per round (distinct states; × for one encoding per device)", "coordinator CPU", "peak RSS", "lost per round (why)"):
        table.add_column(column, justify="right", no_wrap=True)
    for figures in results:
        walls = figures["round_wall_s"]
        wall = f"{statistics.median(walls):.1f} s ({statistics.median(walls) / train_s:.2f}×)" if walls else "—"
        overhead = f"{max(figures['overhead_s']):.2f} s max, {statistics.median(figures['overhead_s']):.2f} median" if figures["overhead_s"] else "—"
        why = ", ".join(f"{reason}: {count}" for reason, count in figures["lost_reasons"].items())
        table.add_row(
            f"{figures['agents']:,}", f"{figures['planned']:,} / {figures['refused']:,}", f"{figures['registration_s']} s", f"{figures['plan_s']} s",
            wall, overhead, f"{figures['message_wait_p50_s']} s / {figures['message_wait_p99_s']} s", ", ".join(f"{cpu:.3f} s ({states}; {figures['planned'] / max(states, 1):,.0f}×)" for cpu, states in zip(figures["fanout_cpu_s"], figures["distinct_states"])),
            f"{figures['cpu_s']} s", f"{figures['peak_rss_mib']} MiB", f"{figures['lost_per_round']}" + (f" ({why})" if why else "") + (f", {sum(figures['lost_without_reason'])} without a reason" if any(figures["lost_without_reason"]) else ""),
        )
    console.print(table)


if __name__ == "__main__":
    main()
