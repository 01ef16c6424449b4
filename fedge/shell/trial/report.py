"""A trial's report: one table row per strategy (mean over seeds with its 95% interval), paired comparisons against a
baseline, and plots, from the runs' own records.

The score is the task's headline metric (classify: accuracy; instruct: token F1 or exact match), measured two ways
on the same held-out set: the coordinator's global model (where the strategy has one) and the mean over devices of
the model each device holds after the round (personalised strategies such as CE-LoRA have only this). "Primary" is
the global figure where it exists, else the devices' mean. Round 0 is the pretrained model; the centralised
reference (one adapter on the pooled shards) is drawn dashed where the trial ran it. Intervals and tests:
``fedge.shell.trial.intervals``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from fedge.privacy import DEFAULT_DELTA, epsilon
from fedge.shell.trial.config import TrialConfig
from fedge.shell.trial.data import FIELD_SOURCE
from fedge.shell.trial.intervals import CONFIDENCE, Comparison, Interval, compare, interval
from fedge.shell.trial.plots import CENTRALISED, plot_curves
from fedge.shell.trial.runs import RunResult, load_run
from fedge.shell.trial.virtual_report import virtual_section
from fedge.strategies import STRATEGIES


@dataclass(frozen=True)
class Report:
    path: Path
    table: Table


def rounds_to(accuracies: list[float], target: float) -> int | None:
    return next((index for index, value in enumerate(accuracies) if index and value >= target), None)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _fmt_interval(bounds: dict) -> str:
    """"mean ± half-width" (just the mean for one seed)."""
    spread = "" if math.isnan(bounds["low"]) else f" ± {(bounds['high'] - bounds['low']) / 2:.3f}"
    return _fmt(bounds["mean"]) + spread


def summarise(results: list[RunResult], target: float) -> list[dict]:
    rows = []
    for strategy in dict.fromkeys(r.strategy for r in results):
        runs = [r for r in results if r.strategy == strategy]
        reached = [rounds_to(r.primary, target) for r in runs]
        seconds = [r.elapsed_s[index] if index is not None else None for r, index in zip(runs, reached)]
        rows.append({
            "strategy": strategy,
            "seeds": len(runs),
            "pretrained": _mean([r.server_accuracy[0] for r in runs]),
            "final_global": _mean([r.server_accuracy[-1] for r in runs]),
            "final_global_interval": asdict(interval([r.server_accuracy[-1] for r in runs])),
            "final_loss": _mean([r.server_loss[-1] for r in runs]),
            "best_global": _mean([max(r.server_accuracy[1:], default=math.nan) for r in runs]),
            "final_devices": _mean([r.device_accuracy[-1] for r in runs]),
            "final_devices_interval": asdict(interval([r.device_accuracy[-1] for r in runs])),
            "best_devices": _mean([max((a for a in r.device_accuracy[1:] if not math.isnan(a)), default=math.nan) for r in runs]),
            "rounds_to_target": None if None in reached else statistics.fmean(reached),
            "seconds_to_target": None if None in seconds else _mean(seconds),
            "planned_round_s": _mean([r.planned_round_s for r in runs]),
            "planned_s_to_target": None if None in reached else _mean([r.planned_s[index] for r, index in zip(runs, reached)]),
            "up_per_client_round": _mean([sum(r.bytes_up) / len(r.bytes_up) / r.clients for r in runs]),
            "down_per_client_round": _mean([sum(r.bytes_down) / len(r.bytes_down) / r.clients for r in runs]),
            "server_s": _mean([r.server_s for r in runs]),
            "wall_s": _mean([r.wall_s for r in runs]),
            "ranks": runs[0].ranks,
        })
    return rows


def centralised_curve(centralised: dict[int, list[dict]], key: str = "accuracy") -> list[Interval]:
    """The centralised reference per round over seeds (empty when the trial did not run it)."""
    runs = list(centralised.values())
    return [interval([run[i][key] for run in runs]) for i in range(len(runs[0]))] if runs else []


def curves(results: list[RunResult]) -> dict[str, list[Interval]]:
    """Each strategy's primary score per round over its seeds."""
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.strategy, []).append(result)
    return {strategy: [interval([run.primary[i] for run in runs]) for i in range(min(len(run.primary) for run in runs))] for strategy, runs in grouped.items()}


def final_scores(results: list[RunResult], centralised: dict[int, list[dict]]) -> dict[str, dict[int, float]]:
    """name -> seed -> final primary score, the centralised reference included where it ran."""
    scores: dict[str, dict[int, float]] = {}
    for result in results:
        scores.setdefault(result.strategy, {})[result.seed] = result.primary[-1]
    if centralised:
        scores[CENTRALISED] = {int(seed): records[-1]["accuracy"] for seed, records in centralised.items()}
    return scores


def comparison_section(trial: TrialConfig, comparisons: list[Comparison], metric: str) -> list[str]:
    """The markdown section that sets every strategy against the trial's baseline."""
    if not comparisons:
        return []
    baseline = comparisons[0].baseline
    lines = [f"## Against the baseline: {baseline}", ""]
    if all(c.difference.count < 2 for c in comparisons):
        return lines + [f"One seed: no intervals and no tests. List three or more `seeds` (seeds {list(trial.seeds)} now) to compare with {baseline}.", ""]
    level = 1 - CONFIDENCE
    lines += [f"Final {metric} minus {baseline}'s, paired by seed (each seed's runs share their data split and starting point): the mean difference with its "
              f"{CONFIDENCE:.0%} t-interval, the two-sided paired t-test's p and Holm's adjustment over the {len(comparisons)} comparisons; "
              f"significant when the adjusted p < {level:g}.", "",
              "| strategy | seeds | difference | 95% interval | p | Holm p | significant |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        bounds = "—" if math.isnan(c.difference.low) else f"[{c.difference.low:+.3f}, {c.difference.high:+.3f}]"
        verdict = "—" if math.isnan(c.adjusted_p) else ("yes, better" if c.significant and c.difference.mean > 0 else "yes, worse" if c.significant else "no")
        lines.append(f"| {c.strategy} | {c.difference.count} | {c.difference.mean:+.3f} | {bounds} | {_fmt(c.p_value)} | {_fmt(c.adjusted_p)} | {verdict} |")
    return lines + [""]


def baseline_name(trial: TrialConfig, scores: dict[str, dict[int, float]]) -> str | None:
    """The trial's named baseline (``centralised`` for the pooled reference), else its first strategy that finished."""
    wanted = CENTRALISED if trial.baseline == "centralised" else trial.baseline or next((run.label for run in trial.strategies if run.label in scores), None)
    return wanted if wanted in scores else None


def _privacy_sentence(trial: TrialConfig) -> str:
    privacy = trial.privacy
    delta = privacy.get("delta", DEFAULT_DELTA)
    spent = epsilon(trial.rounds, privacy["noise_multiplier"], delta)
    return (f" Differential privacy on the devices: each clipped its round's change to L2 norm {privacy['clip_norm']} and added Gaussian noise of std "
            f"{privacy['noise_multiplier']} × that; a device in all {trial.rounds} rounds spent ε = {spent:.2f} at δ = {delta:g} (fedge.privacy).")


def write_report(trial: TrialConfig, runs: list[dict], splits: dict[int, dict], centralised: dict[int, list[dict]], out_dir: Path, wall_s: float,
                 notes: list[str] = (), kept: int = 0) -> Report:
    """The report of a trial's finished ``runs`` ({strategy, name, seed, run_dir, exit}); ``notes``: anything the
    reader must know that the records do not say (a field trial's arms that planned other devices); ``kept``: how
    many of the runs an earlier invocation finished (``wall_s`` is this invocation's alone)."""
    failed = [run for run in runs if run["exit"] != 0]
    results = [load_run(run["strategy"], run["seed"], Path(run["run_dir"])) for run in runs if run["exit"] == 0]
    rows = summarise(results, trial.target_accuracy)
    central = centralised_curve(centralised)
    per_round = curves(results)
    scores = final_scores(results, centralised)
    baseline = baseline_name(trial, scores)
    comparisons = compare(baseline, scores) if baseline else []
    metric = trial.metric
    images = plot_curves(results, per_round, central, metric, out_dir) if results else ()
    table = Table(title=f"Trial {trial.name}: {len(trial.fleet)} devices, {trial.data.source} data, seeds {list(trial.seeds)}, {trial.rounds} rounds × {trial.local_steps} steps")
    headers = ["strategy", f"pretrained {metric}", f"final {metric}", f"best {metric}", "final loss", f"final {metric} (devices)", f"rounds to {trial.target_accuracy}", f"seconds to {trial.target_accuracy}", "planned round s", f"planned s to {trial.target_accuracy}", "KB up /client/round", "KB down /client/round", "server s", "wall s"]
    for header in headers:
        table.add_column(header, justify="left" if header == "strategy" else "right")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["strategy"], _fmt(row["pretrained"]), _fmt_interval(row["final_global_interval"]), _fmt(row["best_global"]), _fmt(row["final_loss"]), _fmt_interval(row["final_devices_interval"]),
                 "not reached" if row["rounds_to_target"] is None else f"{row['rounds_to_target']:.1f}",
                 "not reached" if row["seconds_to_target"] is None else f"{row['seconds_to_target']:.0f}", _fmt(row["planned_round_s"], 1),
                 "not reached" if row["planned_s_to_target"] is None else _fmt(row["planned_s_to_target"], 1),
                 f"{row['up_per_client_round'] / 1e3:.1f}", f"{row['down_per_client_round'] / 1e3:.1f}", f"{row['server_s']:.2f}", f"{row['wall_s']:.0f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    if central:
        means = [point.mean for point in central]
        reached = rounds_to(means, trial.target_accuracy)
        cells = [CENTRALISED, _fmt(means[0]), _fmt_interval(asdict(central[-1])), _fmt(max(means[1:], default=math.nan)), _fmt(centralised_curve(centralised, "loss")[-1].mean), "—",
                 "not reached" if reached is None else str(reached)]
        cells += ["—"] * (len(headers) - len(cells))  # no host or planned clock, no bytes, no server
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    one_rank = sorted({run.name for run in trial.strategies if not STRATEGIES[run.name].mixed_ranks})
    task = trial.task_spec
    text = [f"# Field trial: {trial.name}", "",
            f"Backbone {trial.backbone}; task {task.kind} ({metric}); data {trial.data.source}; fleet {', '.join(trial.fleet)}; seeds {list(trial.seeds)}; "
            f"{trial.rounds} rounds of {trial.local_steps} local steps (batch {trial.batch_size}, lr {trial.learning_rate}); planner {trial.planner}. "
            f"Wall time {wall_s:.0f} s" + (f" for this invocation, which kept {kept} of the {len(runs)} runs from earlier ones (each run's own is its row's wall s)." if kept else "."), "", *lines, "",
            *([f"Final scores are means over seeds ± half the {CONFIDENCE:.0%} t-interval.", ""] if len(trial.seeds) > 1 else []),
            "Scores: the coordinator's global model on the held-out set (pretrained = round 0, final, best) and its loss per scored token; \"devices\": the mean over devices of the model each holds after the round (the only figure for CE-LoRA, which has no global model). "
            "\"seconds\" are this host's clock; \"planned\" seconds are the plan's on the real devices (a global round: the slowest device's round, or with HierFedLoRA groups the slowest group's τ_g exchanges). "
            "Bytes are whole encoded messages (fp16 tensors + header) per device per round." + (f" {', '.join(one_rank)} cannot mix ranks: every device trained rank {trial.same_rank} on the layers the planner gave it." if one_rank else "")
            + (f" Centralised: one adapter on the pooled shards, {trial.local_steps * len(trial.fleet)} steps per round (as many examples as the fleet's round)." if central else "")
            + (_privacy_sentence(trial) if trial.privacy else "")
            + (f" Insiders: the first {trial.insider_count} devices were compromised ({trial.insiders['attack']}, fedge.shell.trial.insider)." if trial.insider_count else "")
            + (f" Robust rules: {trial.robust}." if trial.robust else ""), ""]
    if rows:
        where = ("The devices connected to the coordinator, as they reported themselves." if trial.data.source == FIELD_SOURCE else
                 "Devices are catalogue entries simulated on this host: the planner used each real device's memory limit, speed and links; the bases it chose, the wall times and the scores are this host's CPU runs.")
        text += ["## Plans (first seed)", "", where, "", *[f"- {row['strategy']}: " + ", ".join(f"{device} {plan}" for device, plan in sorted(row["ranks"].items())) for row in rows], ""]
    text += comparison_section(trial, comparisons, metric)
    text += ["## Data", ""] + (["Every device trained on its own data (a field trial: nothing was dealt).", ""] if not splits else [])
    for seed, split in splits.items():
        if "labels" in split:
            dealt = "each device's own file" if split["alpha"] is None else f"Dirichlet α={split['alpha']}"
            text += [f"Seed {seed}, {split['source']}, {dealt}, {split['test_examples']} held-out examples; label histograms ({', '.join(split['labels'])}):", ""]
        else:
            text += [f"Seed {seed}, {split['source']}, {split['test_examples']} held-out conversations; each device's share:", ""]
        text += [f"- {agent}: {share}" for agent, share in split["agents"].items()] + [""]
    text += virtual_section(trial, runs, out_dir)
    if notes:
        text += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    if failed:
        text += ["## Failed runs", "", *[f"- {run['strategy']} seed {run['seed']}: exit {run['exit']} (logs in {run['run_dir']}/logs)" for run in failed], ""]
    titles = ("per round", "against bytes", "against time", "against planned time")  # plot_curves' order
    text += [line for image, title in zip(images, titles) for line in (f"![{metric} {title}]({image.name})", "")]
    path = out_dir / "report.md"
    path.write_text("\n".join(text))
    (out_dir / "report.json").write_text(json.dumps({"rows": rows, "curves": {name: [asdict(point) for point in curve] for name, curve in per_round.items()},
                                                        "centralised_curve": [asdict(point) for point in central], "comparisons": [asdict(c) for c in comparisons],
                                                        "centralised": centralised, "runs": runs, "splits": splits, "wall_s": wall_s, "kept_runs": kept}, indent=2, default=str))
    return Report(path, table)
