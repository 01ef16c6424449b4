"""The report's virtual-fleet section: each first-seed run's ``virtual.json`` (``fedge.shell.trial.virtual``) as a table
and a plot of rounds completed against virtual time."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from fedge.shell.trial.config import TrialConfig
from fedge.shell.trial.plots import plt, save


def virtual_section(trial: TrialConfig, runs: list[dict], out_dir: Path) -> list[str]:
    """The virtual fleet's clock per run (``virtual.json`` beside each first-seed run), as a table and a plot."""
    clocked = [(run["strategy"], json.loads((Path(run["run_dir"]) / "virtual.json").read_text())) for run in runs if (Path(run["run_dir"]) / "virtual.json").exists()]
    if not clocked:
        return []
    figure, axis = plt.subplots(figsize=(7, 4.5))
    mix = ", ".join(f"{entry.get('count', 1)}× {entry['device']}" for entry in trial.virtual_fleet)
    lines = ["## Virtual fleet", "", f"{clocked[0][1]['devices']:,} catalogue devices ({mix}) planned with each run's settings and clocked from "
             "their predicted step times and links, none of them trained (fedge.shell.trial.virtual); the coordinator's own time per round is not counted.", "",
             "| run | planned | preparing s | median round s | all rounds s | MB per round, up + down | mean staleness |", "|---|---|---|---|---|---|---|"]
    for label, run in clocked:
        rounds = run["rounds"]
        megabytes = statistics.fmean((r["bytes_up"] + r["bytes_down"]) / 1e6 for r in rounds) if rounds else math.nan
        lines.append(f"| {label} | {run['planned']:,} | {run['prepare_s']:.0f} | {statistics.median(run['round_seconds']) if rounds else math.nan:.2f} | {rounds[-1]['ends_s'] - run['prepare_s'] if rounds else math.nan:.1f} | {megabytes:,.0f} | {statistics.fmean(r['mean_staleness'] for r in rounds) if rounds else math.nan:.2f} |")
        axis.plot([run["prepare_s"]] + [r["ends_s"] for r in rounds], range(len(rounds) + 1), marker=".", label=label)
    axis.set(xlabel="virtual seconds since preparing began", ylabel="rounds completed", title=f"{clocked[0][1]['devices']:,}-device virtual fleet")
    save(figure, axis, out_dir / "virtual_fleet.png")
    return lines + ["", "![virtual fleet](virtual_fleet.png)", ""]
