"""A trial's pictures: the headline metric per round, against bytes sent, against this host's wall-clock time and
against the planned time on the real devices, each strategy's mean over seeds with its 95% interval shaded
(``fedge.shell.trial.intervals``), the centralised reference dashed."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedge.shell.trial.intervals import Interval  # noqa: E402
from fedge.shell.trial.runs import RunResult  # noqa: E402

CENTRALISED = "centralised (pooled data)"


def plot_curves(results: list[RunResult], curves: dict[str, list[Interval]], central: list[Interval], metric: str, out_dir: Path) -> tuple[Path, Path, Path, Path]:
    """The four plots; ``curves``: each strategy's per-round interval, ``central`` the centralised one (may be empty)."""
    per_round, per_bytes, per_second = out_dir / "accuracy.png", out_dir / "accuracy_vs_bytes.png", out_dir / "accuracy_vs_time.png"
    per_planned_second = out_dir / "accuracy_vs_planned_time.png"
    seeds = max(interval.count for curve in curves.values() for interval in curve)
    shaded = " (shaded: 95% interval over seeds)" if seeds > 1 else ""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy, curve in curves.items():
        _band(axis, list(range(len(curve))), curve, strategy, marker="o")
    if central:
        _band(axis, list(range(len(central))), central, CENTRALISED, linestyle="--", color="black")
    axis.set(xlabel="round (0: pretrained)", ylabel=f"held-out {metric}", title=f"{metric} per round{shaded}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(figure, axis, per_round)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy, curve in curves.items():
        run = next(r for r in results if r.strategy == strategy)
        sent = [0.0]
        for up, down in zip(run.bytes_up, run.bytes_down):
            sent.append(sent[-1] + (up + down) / 1e6)
        _band(axis, sent[1:], curve[1 : len(sent)], strategy, marker="o")
    axis.set(xscale="log", xlabel="MB sent, up + down, all devices (cumulative)", ylabel=f"held-out {metric}", title=f"{metric} against bytes sent{shaded}")
    save(figure, axis, per_bytes)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy in curves:  # the first seed's clock: seeds' rounds do not end at the same seconds
        run = next(r for r in results if r.strategy == strategy)
        axis.plot(run.elapsed_s, run.primary, marker="o", label=strategy)
    axis.set(xlabel="seconds since the first round began", ylabel=f"held-out {metric}", title=f"{metric} against wall-clock time (first seed)")
    save(figure, axis, per_second)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy, curve in curves.items():
        runs = [r for r in results if r.strategy == strategy]
        clock = [statistics.fmean(run.planned_s[index] for run in runs) for index in range(len(curve))]
        _band(axis, clock, curve, strategy, marker="o")
    axis.set(xlabel="planned seconds on the real devices since the first round began", ylabel=f"held-out {metric}",
             title=f"{metric} against planned device time{shaded}")
    save(figure, axis, per_planned_second)
    return per_round, per_bytes, per_second, per_planned_second


def _band(axis, xs: list[float], curve: list[Interval], label: str, **style) -> None:
    line, = axis.plot(xs, [interval.mean for interval in curve], label=label, **style)
    low, high = [interval.low for interval in curve], [interval.high for interval in curve]
    if any(not math.isnan(value) for value in low):
        axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def save(figure, axis, path: Path) -> None:
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
