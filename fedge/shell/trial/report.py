"""A trial's report: one table row per strategy (mean over seeds) and two plots, from the runs' own records.

The score is the task's headline metric (classify: accuracy; instruct: token F1 or exact match), measured two ways
on the same held-out set: the coordinator's global model (where the strategy has one) and the mean over devices of
the model each device holds after the round (personalised strategies such as CE-LoRA have only this). "Primary" is
the global figure where it exists, else the devices' mean. Round 0 is the pretrained model; the centralised
reference (one adapter on the pooled shards) is drawn dashed where the trial ran it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from fedge.privacy import DEFAULT_DELTA, epsilon  # noqa: E402
from fedge.strategies import STRATEGIES  # noqa: E402
from fedge.shell.trial.config import TrialConfig  # noqa: E402


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

    @property
    def primary(self) -> list[float]:
        return self.device_accuracy if all(math.isnan(a) for a in self.server_accuracy[1:]) else self.server_accuracy


@dataclass(frozen=True)
class Report:
    path: Path
    table: Table


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
    )


def rounds_to(accuracies: list[float], target: float) -> int | None:
    return next((index for index, value in enumerate(accuracies) if index and value >= target), None)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


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
            "final_loss": _mean([r.server_loss[-1] for r in runs]),
            "best_global": _mean([max(r.server_accuracy[1:], default=math.nan) for r in runs]),
            "final_devices": _mean([r.device_accuracy[-1] for r in runs]),
            "best_devices": _mean([max((a for a in r.device_accuracy[1:] if not math.isnan(a)), default=math.nan) for r in runs]),
            "rounds_to_target": None if None in reached else statistics.fmean(reached),
            "seconds_to_target": None if None in seconds else _mean(seconds),
            "up_per_client_round": _mean([sum(r.bytes_up) / len(r.bytes_up) / r.clients for r in runs]),
            "down_per_client_round": _mean([sum(r.bytes_down) / len(r.bytes_down) / r.clients for r in runs]),
            "server_s": _mean([r.server_s for r in runs]),
            "wall_s": _mean([r.wall_s for r in runs]),
            "ranks": runs[0].ranks,
        })
    return rows


def centralised_curve(centralised: dict[int, list[dict]], key: str = "accuracy") -> list[float]:
    """The centralised reference per round, mean over seeds (empty when the trial did not run it)."""
    runs = list(centralised.values())
    return [_mean([run[i][key] for run in runs]) for i in range(len(runs[0]))] if runs else []


def plot(results: list[RunResult], central: list[float], metric: str, out_dir: Path) -> tuple[Path, Path, Path]:
    strategies = list(dict.fromkeys(r.strategy for r in results))
    per_round, per_bytes, per_second = out_dir / "accuracy.png", out_dir / "accuracy_vs_bytes.png", out_dir / "accuracy_vs_time.png"
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy in strategies:
        runs = [r for r in results if r.strategy == strategy]
        curve = [_mean([r.primary[i] for r in runs]) for i in range(len(runs[0].primary))]
        axis.plot(range(len(curve)), curve, marker="o", label=strategy)
    if central:
        axis.plot(range(len(central)), central, linestyle="--", color="black", label="centralised (pooled data)")
    axis.set(xlabel="round (0: pretrained)", ylabel=f"held-out {metric}", title=f"{metric} per round (global model; devices' mean for CE-LoRA)")
    _save(figure, axis, per_round)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy in strategies:
        runs = [r for r in results if r.strategy == strategy]
        run = runs[0]
        sent = [0.0]
        for up, down in zip(run.bytes_up, run.bytes_down):
            sent.append(sent[-1] + (up + down) / 1e6)
        curve = [_mean([r.primary[i] for r in runs]) for i in range(len(sent))]
        axis.plot(sent[1:], curve[1:], marker="o", label=strategy)
    axis.set(xscale="log", xlabel="MB sent, up + down, all devices (cumulative)", ylabel=f"held-out {metric}", title=f"{metric} against bytes sent")
    _save(figure, axis, per_bytes)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for strategy in strategies:  # the first seed's clock: seeds' rounds do not end at the same seconds
        run = next(r for r in results if r.strategy == strategy)
        axis.plot(run.elapsed_s, run.primary, marker="o", label=strategy)
    axis.set(xlabel="seconds since the first round began", ylabel=f"held-out {metric}", title=f"{metric} against wall-clock time (first seed)")
    _save(figure, axis, per_second)
    return per_round, per_bytes, per_second


def _save(figure, axis, path: Path) -> None:
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _privacy_sentence(trial: TrialConfig) -> str:
    privacy = trial.privacy
    delta = privacy.get("delta", DEFAULT_DELTA)
    spent = epsilon(trial.rounds, privacy["noise_multiplier"], delta)
    return (f" Differential privacy on the devices: each clipped its round's change to L2 norm {privacy['clip_norm']} and added Gaussian noise of std "
            f"{privacy['noise_multiplier']} × that; a device in all {trial.rounds} rounds spent ε = {spent:.2f} at δ = {delta:g} (fedge.privacy).")


def _virtual_section(trial: TrialConfig, runs: list[dict], out_dir: Path) -> list[str]:
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
    _save(figure, axis, out_dir / "virtual_fleet.png")
    return lines + ["", "![virtual fleet](virtual_fleet.png)", ""]


def write_report(trial: TrialConfig, runs: list[dict], splits: dict[int, dict], centralised: dict[int, list[dict]], out_dir: Path, wall_s: float) -> Report:
    failed = [run for run in runs if run["exit"] != 0]
    results = [load_run(run["strategy"], run["seed"], Path(run["run_dir"])) for run in runs if run["exit"] == 0]
    rows = summarise(results, trial.target_accuracy)
    central = centralised_curve(centralised)
    metric = trial.metric
    images = plot(results, central, metric, out_dir) if results else ()
    table = Table(title=f"Trial {trial.name}: {len(trial.fleet)} devices, {trial.data.source} data, seeds {list(trial.seeds)}, {trial.rounds} rounds × {trial.local_steps} steps")
    headers = ["strategy", f"pretrained {metric}", f"final {metric}", f"best {metric}", "final loss", f"final {metric} (devices)", f"rounds to {trial.target_accuracy}", f"seconds to {trial.target_accuracy}", "KB up /client/round", "KB down /client/round", "server s", "wall s"]
    for header in headers:
        table.add_column(header, justify="left" if header == "strategy" else "right")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["strategy"], _fmt(row["pretrained"]), _fmt(row["final_global"]), _fmt(row["best_global"]), _fmt(row["final_loss"]), _fmt(row["final_devices"]),
                 "not reached" if row["rounds_to_target"] is None else f"{row['rounds_to_target']:.1f}",
                 "not reached" if row["seconds_to_target"] is None else f"{row['seconds_to_target']:.0f}",
                 f"{row['up_per_client_round'] / 1e3:.1f}", f"{row['down_per_client_round'] / 1e3:.1f}", f"{row['server_s']:.2f}", f"{row['wall_s']:.0f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    if central:
        reached = rounds_to(central, trial.target_accuracy)
        cells = ["centralised (pooled data)", _fmt(central[0]), _fmt(central[-1]), _fmt(max(central[1:], default=math.nan)), _fmt(centralised_curve(centralised, "loss")[-1]), "—",
                 "not reached" if reached is None else str(reached), "—", "—", "—", "—", "—"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    one_rank = sorted({run.name for run in trial.strategies if not STRATEGIES[run.name].mixed_ranks})
    task = trial.task_spec
    text = [f"# Field trial: {trial.name}", "",
            f"Backbone {trial.backbone}; task {task.kind} ({metric}); data {trial.data.source}; fleet {', '.join(trial.fleet)}; seeds {list(trial.seeds)}; "
            f"{trial.rounds} rounds of {trial.local_steps} local steps (batch {trial.batch_size}, lr {trial.learning_rate}); planner {trial.planner}. "
            f"Wall time {wall_s:.0f} s.", "", *lines, "",
            "Scores: the coordinator's global model on the held-out set (pretrained = round 0, final, best) and its loss per scored token; \"devices\": the mean over devices of the model each holds after the round (the only figure for CE-LoRA, which has no global model). "
            "Bytes are whole encoded messages (fp16 tensors + header) per device per round." + (f" {', '.join(one_rank)} cannot mix ranks: every device trained rank {trial.same_rank} on the layers the planner gave it." if one_rank else "")
            + (f" Centralised: one adapter on the pooled shards, {trial.local_steps * len(trial.fleet)} steps per round (as many examples as the fleet's round)." if central else "")
            + (_privacy_sentence(trial) if trial.privacy else "")
            + (f" Insiders: the first {trial.insider_count} devices were compromised ({trial.insiders['attack']}, fedge.shell.trial.insider)." if trial.insider_count else "")
            + (f" Robust rules: {trial.robust}." if trial.robust else ""), ""]
    if rows:
        text += ["## Plans (first seed)", "", "Devices are catalogue entries simulated on this host: the planner used each real device's memory limit, speed and links; the bases it chose, the wall times and the scores are this host's CPU runs.", "", *[f"- {row['strategy']}: " + ", ".join(f"{device} {plan}" for device, plan in sorted(row["ranks"].items())) for row in rows], ""]
    text += ["## Data", ""]
    for seed, split in splits.items():
        if "labels" in split:
            text += [f"Seed {seed}, {split['source']}, Dirichlet α={split['alpha']}, {split['test_examples']} held-out examples; label histograms ({', '.join(split['labels'])}):", ""]
        else:
            text += [f"Seed {seed}, {split['source']}, {split['test_examples']} held-out conversations; each device's share:", ""]
        text += [f"- {agent}: {share}" for agent, share in split["agents"].items()] + [""]
    text += _virtual_section(trial, runs, out_dir)
    if failed:
        text += ["## Failed runs", "", *[f"- {run['strategy']} seed {run['seed']}: exit {run['exit']} (logs in {run['run_dir']}/logs)" for run in failed], ""]
    text += [f"![{metric} per round]({images[0].name})", "", f"![{metric} against bytes]({images[1].name})", "", f"![{metric} against time]({images[2].name})", ""] if images else []
    path = out_dir / "report.md"
    path.write_text("\n".join(text))
    (out_dir / "report.json").write_text(json.dumps({"rows": rows, "centralised": centralised, "runs": runs, "splits": splits, "wall_s": wall_s}, indent=2, default=str))
    return Report(path, table)
