"""Seed statistics of a trial: t-intervals, paired tests with Holm's correction, and the report built from them."""

import json
import math

import matplotlib.pyplot as plt
import pytest

from fedge.coordinator.config import ConfigError
from fedge.shell.trial.config import TrialConfig
from fedge.shell.trial.data import TrialData, prepare_data
from fedge.shell.trial.intervals import compare, holm, interval, paired_p_value
from fedge.shell.trial.plots import _band
from fedge.shell.trial.report import write_report
from fedge.task.data import Example, write_jsonl
from fedge.wire import TaskSpec

import numpy as np


def test_interval_is_the_student_t_interval_of_the_mean():
    result = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) from the table; sample sd sqrt(2.5)
    assert result.mean == 3.0 and result.count == 5
    assert result.low == pytest.approx(3 - half, abs=1e-6) and result.high == pytest.approx(3 + half, abs=1e-6)
    one = interval([0.7, math.nan])
    assert one.mean == 0.7 and one.count == 1 and math.isnan(one.low) and math.isnan(one.high)
    assert interval([]).count == 0 and math.isnan(interval([]).mean)


def test_paired_p_value_matches_the_closed_form_for_two_degrees_of_freedom():
    differences = np.array([0.10, 0.12, 0.08])
    t = 0.10 / (0.02 / math.sqrt(3))
    assert paired_p_value(differences) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)  # two-sided, df = 2
    assert paired_p_value(np.array([0.05, 0.05, 0.05])) == 0.0 and paired_p_value(np.zeros(3)) == 1.0
    assert math.isnan(paired_p_value(np.array([0.3])))


def test_holm_steps_down_and_keeps_the_adjusted_values_monotone():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)


def test_compare_pairs_by_seed_and_ignores_seeds_the_baseline_lacks():
    scores = {"base": {0: 0.50, 1: 0.60, 2: 0.55}, "better": {0: 0.60, 1: 0.71, 2: 0.64, 3: 0.99}, "same": {0: 0.52, 1: 0.57, 2: 0.56}}
    better, same = compare("base", scores)
    assert better.strategy == "better" and better.difference.count == 3 and better.difference.mean == pytest.approx(0.1)
    assert better.significant and better.adjusted_p == pytest.approx(2 * better.p_value)
    assert not same.significant and same.difference.low < 0 < same.difference.high
    lone = compare("base", {"base": {0: 0.5}, "other": {0: 0.9}})[0]
    assert not lone.significant and math.isnan(lone.p_value) and lone.difference.count == 1


def test_a_band_is_shaded_only_where_there_is_an_interval():
    figure, axis = plt.subplots()
    _band(axis, [0, 1], [interval([0.1, 0.2, 0.3]), interval([0.4, 0.5, 0.7])], "three seeds")
    _band(axis, [0, 1], [interval([0.1]), interval([0.5])], "one seed")
    assert len(axis.lines) == 2 and len(axis.collections) == 1
    plt.close(figure)


def _fake_run(run_dir, finals):
    coordinator = run_dir / "coordinator"
    coordinator.mkdir(parents=True)
    records = [{"round": 0, "accuracy": 0.2, "loss": 3.0}] + [
        {"round": r, "accuracy": score, "loss": 1.0, "bytes_up": {"a": 100, "b": 100}, "bytes_down": {"a": 50, "b": 50}, "participants": ["a", "b"], "elapsed_s": 10.0 * r}
        for r, score in enumerate(finals, start=1)]
    (coordinator / "metrics.jsonl").write_text("\n".join(json.dumps(record) for record in records))


def test_a_multi_seed_report_gives_intervals_comparisons_and_bands(tmp_path):
    trial = TrialConfig.from_dict({"strategies": ["hetlora", "flexlora", "fedit"], "fleet": ["cpu-8gb", "cpu-16gb"], "seeds": [0, 1, 2], "rounds": 2,
                                   "baseline": "hetlora", "centralised": True})
    finals = {"hetlora": [0.60, 0.64, 0.62], "flexlora": [0.70, 0.75, 0.71], "fedit": [0.61, 0.62, 0.64]}
    runs = []
    for strategy, scores in finals.items():
        for seed, score in enumerate(scores):
            run_dir = tmp_path / f"seed_{seed}" / strategy
            _fake_run(run_dir, [0.4, score])
            runs.append({"strategy": strategy, "name": strategy, "seed": seed, "run_dir": str(run_dir), "exit": 0})
    centralised = {seed: [{"round": r, "accuracy": a, "loss": 1.0} for r, a in enumerate([0.2, 0.6, 0.8 + seed / 100])] for seed in range(3)}
    splits = {seed: {"agents": {"a": 10, "b": 10}, "source": "files", "seed": seed, "test_examples": 5} for seed in range(3)}
    report = write_report(trial, runs, splits, centralised, tmp_path, 1.0)
    saved = json.loads((tmp_path / "report.json").read_text())
    final = saved["curves"]["flexlora"][-1]
    assert final["count"] == 3 and final["mean"] == pytest.approx(0.72) and final["low"] < final["mean"] < final["high"]
    start = saved["curves"]["hetlora"][0]
    assert start["low"] == pytest.approx(0.2) and start["high"] == pytest.approx(0.2)  # every seed starts from the same model
    comparisons = {c["strategy"]: c for c in saved["comparisons"]}
    assert set(comparisons) == {"flexlora", "fedit", "centralised (pooled data)"} and all(c["baseline"] == "hetlora" for c in comparisons.values())
    assert comparisons["flexlora"]["significant"] and comparisons["flexlora"]["difference"]["mean"] == pytest.approx(0.1)
    assert not comparisons["fedit"]["significant"]
    markdown = report.path.read_text()
    assert "## Against the baseline: hetlora" in markdown and "| flexlora | 3 | +0.100 |" in markdown and "yes, better" in markdown
    assert "0.720 ± " in markdown and "Holm" in markdown
    assert (tmp_path / "accuracy.png").stat().st_size > 5000


def test_one_seed_says_there_is_nothing_to_test(tmp_path):
    trial = TrialConfig.from_dict({"strategies": ["hetlora", "flexlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "rounds": 1})
    runs = []
    for strategy in ("hetlora", "flexlora"):
        _fake_run(tmp_path / strategy, [0.5])
        runs.append({"strategy": strategy, "name": strategy, "seed": 0, "run_dir": str(tmp_path / strategy), "exit": 0})
    markdown = write_report(trial, runs, {}, {}, tmp_path, 1.0).path.read_text()
    assert "## Against the baseline: hetlora" in markdown and "One seed: no intervals and no tests" in markdown and " ± " not in markdown


def test_the_baseline_and_per_device_files_are_checked():
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "baseline": "flexlora"})
    assert "baseline: 'flexlora' is not one of this trial's runs (hetlora, centralised)" in str(error.value)
    with pytest.raises(ConfigError, match="baseline: centralised needs centralised: true"):
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "baseline": "centralised"})
    with pytest.raises(ConfigError, match=r"data.train: 3 files for 2 fleet devices"):
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "data": {"source": "files", "train": ["a", "b", "c"], "test": "t"},
                               "task": {"kind": "classify", "labels": ["x", "y"], "prompt": "{text}"}})
    with pytest.raises(ConfigError, match=r"data.train: expected a string or a list \(got 7\)"):
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "data": {"source": "files", "train": 7, "test": "t"},
                               "task": {"kind": "classify", "labels": ["x", "y"], "prompt": "{text}"}})
    labelled = TrialConfig.from_dict({"strategies": ["hetlora", {"name": "hetlora", "proximal_mu": 0.01}], "fleet": ["cpu-8gb", "cpu-16gb"], "baseline": "hetlora fedprox μ=0.01"})
    assert labelled.baseline == "hetlora fedprox μ=0.01"


def test_each_device_keeps_its_own_file(tmp_path):
    task = TaskSpec("classify", labels=("cat", "dog"), prompt="{text}")
    own = [[Example("purr", 0)] * 3, [Example("bark", 1)] * 5]
    for index, examples in enumerate(own):
        write_jsonl(tmp_path / f"device{index}.jsonl", examples, task.labels)
    write_jsonl(tmp_path / "test.jsonl", [Example("meow", 0), Example("woof", 1)], task.labels)
    data = TrialData(source="files", train=(str(tmp_path / "device0.jsonl"), str(tmp_path / "device1.jsonl")), test=str(tmp_path / "test.jsonl"))
    split = prepare_data(data, task, ["first", "second"], 0, tmp_path / "out")
    assert split["agents"] == {"first": [3, 0], "second": [0, 5]} and split["alpha"] is None and split["test_examples"] == 2
    assert len((tmp_path / "out" / "train_pooled.jsonl").read_text().splitlines()) == 8


def test_a_run_may_set_the_devices_learning_rate(tmp_path):
    from fedge.shell.trial.runner import coordinator_config

    trial = TrialConfig.from_dict({"strategies": ["hetlora", {"name": "hetlora", "learning_rate": 0.004}], "fleet": ["cpu-8gb", "cpu-16gb"], "learning_rate": 0.002})
    plain, faster = trial.strategies
    assert faster.label == "hetlora lr=0.004" and plain.label == "hetlora"
    configs = [coordinator_config(trial, run, 0, tmp_path, tmp_path / "run", "mqtt://127.0.0.1:1883", tmp_path / "fleet") for run in trial.strategies]
    assert [config["learning_rate"] for config in configs] == [0.002, 0.004]
    with pytest.raises(ConfigError, match=r"strategies\[0\].learning_rate: expected a number \(got 'fast'\)"):
        TrialConfig.from_dict({"strategies": [{"name": "hetlora", "learning_rate": "fast"}], "fleet": ["cpu-8gb", "cpu-16gb"]})


def test_a_run_may_set_its_own_groups(tmp_path):
    from fedge.shell.trial.runner import coordinator_config

    trial = TrialConfig.from_dict({"strategies": ["hetlora", {"name": "hetlora", "groups": 2}], "fleet": ["cpu-8gb", "cpu-16gb"], "planner": {"max_depth": 4}})
    plain, grouped = trial.strategies
    assert grouped.label == "hetlora groups=2" and plain.label == "hetlora"
    planners = [coordinator_config(trial, run, 0, tmp_path, tmp_path / "run", "mqtt://127.0.0.1:1883", tmp_path / "fleet")["planner"] for run in trial.strategies]
    assert planners == [{"max_depth": 4}, {"max_depth": 4, "groups": 2}] and trial.planner == {"max_depth": 4}
    with pytest.raises(ConfigError, match=r"strategies\[0\]\..*groups"):  # groups keep sync rounds, checked against the run's own planner
        TrialConfig.from_dict({"strategies": [{"name": "hetlora", "groups": 2, "round_mode": "async"}], "fleet": ["cpu-8gb", "cpu-16gb"]})


def test_the_planned_clock_is_the_slowest_device_or_the_slowest_group(tmp_path):
    from fedge.shell.trial.runs import load_run

    devices = [{"device_id": "a", "feasible": True, "layers": [0], "ranks": [8], "round_seconds": 4.0},
               {"device_id": "b", "feasible": True, "layers": [0, 1], "ranks": [8, 8], "round_seconds": 6.0},
               {"device_id": "c", "feasible": False, "layers": [], "ranks": [], "round_seconds": 60.0}]
    plans = {"ungrouped": {"devices": devices}, "grouped": {"devices": devices, "groups": [{"round_seconds": 5.0}, {"round_seconds": 5.5}]}}
    for name, plan in plans.items():
        _fake_run(tmp_path / name, [0.5, 0.7])
        (tmp_path / name / "coordinator" / "plan.json").write_text(json.dumps(plan))
    ungrouped, grouped = (load_run(name, 0, tmp_path / name) for name in plans)
    assert ungrouped.planned_s == [0.0, 6.0, 12.0] and grouped.planned_s == [0.0, 5.5, 11.0]
    trial = TrialConfig.from_dict({"strategies": ["hetlora", {"name": "hetlora", "groups": 2}], "fleet": ["cpu-8gb", "cpu-16gb"], "rounds": 2, "target_accuracy": 0.6})
    runs = [{"strategy": label, "name": "hetlora", "seed": 0, "run_dir": str(tmp_path / name), "exit": 0} for label, name in (("hetlora", "ungrouped"), ("hetlora groups=2", "grouped"))]
    write_report(trial, runs, {}, {}, tmp_path, 1.0)
    rows = {row["strategy"]: row for row in json.loads((tmp_path / "report.json").read_text())["rows"]}
    assert rows["hetlora"]["planned_s_to_target"] == 12.0 and rows["hetlora groups=2"]["planned_s_to_target"] == 11.0 and rows["hetlora groups=2"]["planned_round_s"] == 5.5
    assert (tmp_path / "accuracy_vs_planned_time.png").stat().st_size > 5000
