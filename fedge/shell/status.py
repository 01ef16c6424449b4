"""``fedge status RUN_DIR``: the live fleet of a running coordinator in a terminal, from the same ``/api/status``
its fleet page reads (the URL is in ``RUN_DIR/live.json``); for a run nobody coordinates now, its last record."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedge.coordinator.live_server import LIVE_FILE

ANSWER_WAIT_S = 2.0


def fetch_status(run_dir: Path) -> dict | None:
    """The running coordinator's status, or None when no coordinator serves this run now."""
    live = run_dir / LIVE_FILE
    if not live.exists():
        return None
    url = json.loads(live.read_text())["url"]
    try:
        with urllib.request.urlopen(f"{url}api/status", timeout=ANSWER_WAIT_S) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def status_table(status: dict) -> Table:
    curve = status["curve"]
    latest = f"; {status['metric']} {curve[-1][1]:.3f} after round {curve[-1][0]}" if curve else ""
    table = Table(title=f"{status['run_id']}: {status['phase']}, round {status['round']} of {status['rounds']}, updates {status['updates_in']}/{status['updates_expected']}{latest}")
    for column in ("device", "profile", "state", "progress", "plan", "last contact"):
        table.add_column(column)
    for device in status["devices"]:
        progress = f"{device['step']}/{device['steps']}" if device["steps"] else ""
        contact = "never" if device["last_contact_s"] is None else f"{device['last_contact_s']:.0f} s ago"
        table.add_row(device["agent_id"], device["profile"], device["state"], progress, device["plan"], contact)
    return table


def last_record(run_dir: Path) -> str:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return f"no coordinator serves {run_dir} now, and it has no recorded round"
    record = json.loads(metrics.read_text().splitlines()[-1])
    return (f"no coordinator serves {run_dir} now; its last record is round {record['round']}: {record.get('metric', 'accuracy')} {record['accuracy']:.3f}, "
            f"{len(record.get('contributors', ()))} contributors, {len(record.get('left_out', {}))} left out")


def show_status(run_dir: Path, console: Console, watch_s: float = 0.0, as_json: bool = False) -> int:
    """Print the status once, or every ``watch_s`` seconds until interrupted; 1 when no coordinator answers."""
    while True:
        status = fetch_status(run_dir)
        if status is None:
            console.print(last_record(run_dir))
            return 1
        if as_json:
            print(json.dumps(status))
        else:
            console.print(status_table(status))
        if not watch_s:
            return 0
        time.sleep(watch_s)
