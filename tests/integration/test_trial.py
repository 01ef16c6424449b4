"""``fedge trial`` end to end on the tiny backbone: same split for every strategy, a report with table and plots."""

import json
import subprocess
import sys

import pytest
import yaml

from safetensors.numpy import load_file

from fedge.coordinator.config import ConfigError
from fedge.strategies.base import C_SUFFIX
from fedge.shell.trial.config import TrialConfig

pytestmark = pytest.mark.broker


def test_a_trial_compares_strategies_on_one_split_and_writes_its_report(tiny_backbone, tmp_path):
    trial = {
        "name": "tiny", "backbone": str(tiny_backbone), "strategies": ["hetlora", "ce-lora", {"name": "hetlora", "round_mode": "async", "buffer_size": 1}],
        "fleet": ["cpu-16gb", "cpu-8gb"], "slowdown": {"cpu-8gb": 3}, "rounds": 2, "local_steps": 2, "batch_size": 4,
        "virtual_fleet": [{"device": "cpu-8gb", "count": 30}, {"device": "jetson-orin-nano-8gb", "count": 20, "examples": 200}],
        "data": {"train_per_label": 6, "test_per_label": 2, "alpha": 1.0, "min_examples": 8},
        "planner": {"max_depth": 2, "ranks": [2, 4]}, "target_accuracy": 0.99, "centralised": True,
    }
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "trial", str(tmp_path / "trial.yaml"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    rows = {row["strategy"]: row for row in report["rows"]}
    assert set(rows) == {"hetlora", "ce-lora", "hetlora async buffer_size=1"}
    assert all(run["exit"] == 0 for run in report["runs"])
    assert rows["ce-lora"]["up_per_client_round"] < rows["hetlora"]["up_per_client_round"]
    assert rows["ce-lora"]["down_per_client_round"] < rows["hetlora"]["down_per_client_round"]  # the queued states' sizes are counted
    core_updates = list((out / "seed_0" / "ce-lora").rglob("updates/round_*/*.safetensors"))
    assert core_updates and all(set(load_file(path)) and all(key.endswith(C_SUFFIX) for key in load_file(path)) for path in core_updates)  # r×r cores only
    assert rows["hetlora"]["final_global"] == rows["hetlora"]["final_global"]  # a number: hetlora has a global model
    assert rows["ce-lora"]["final_devices"] >= 0 and rows["hetlora"]["rounds_to_target"] is None
    assert sum(map(sum, report["splits"]["0"]["agents"].values())) == 8 * 6  # one split, every training example once
    central = report["centralised"]["0"]
    assert [record["round"] for record in central] == [0, 1, 2] and central[0]["accuracy"] == rows["hetlora"]["pretrained"]  # both start from the pretrained model
    seeds_dir = out / "seed_0"
    for run in ("hetlora", "ce-lora"):
        config = yaml.safe_load((seeds_dir / run / "coordinator.yaml").read_text())
        assert config["eval_data"] == str(seeds_dir / "data" / "test.jsonl") and config["seed"] == 0
    markdown = (out / "report.md").read_text()
    assert "| hetlora |" in markdown and "agent-0-cpu-16gb" in markdown and "| centralised (pooled data) |" in markdown
    assert (out / "accuracy.png").stat().st_size > 5000 and (out / "accuracy_vs_bytes.png").stat().st_size > 5000
    assert (out / "accuracy_vs_time.png").stat().st_size > 5000 and (out / "virtual_fleet.png").stat().st_size > 5000
    asynchronous = seeds_dir / "hetlora_async_buffer_size-1"
    assert yaml.safe_load((asynchronous / "coordinator.yaml").read_text())["round_mode"] == "async"
    records = [json.loads(line) for line in (asynchronous / "coordinator" / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["contributors"]) for r in records[1:]] == [1, 1] and all("staleness" in r and r["elapsed_s"] > 0 for r in records[1:])
    clocked = json.loads((asynchronous / "virtual.json").read_text())
    assert clocked["devices"] == 50 and len(clocked["rounds"]) == 2 and "## Virtual fleet" in markdown


def test_trial_config_errors_are_collected():
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict({"strategies": ["fedprox", {"name": "lora-fair", "options": {"solver": "x"}}, {"name": "hetlora", "round_mode": "later", "colour": 2}], "fleet": ["cpu-8gb"], "colour": 1, "device_eval": "some",
                               "privacy": {"clip_norm": -1}, "slowdown": {"cpu-16gb": 0.5}, "virtual_fleet": [{"device": "abacus", "count": 3}]})
    text = str(error.value)
    assert "strategies[2].round_mode: one of" in text and "strategies[2].colour: unknown key" in text and "slowdown.cpu-16gb: must be >= 1" in text
    assert "strategies[0].name: one of" in text and "strategies[1].options: lora-fair solver" in text and "fleet: at least 2 items (got 1)" in text and "\n  colour: unknown key" in text
    assert "device_eval: one of auto, all, none (got 'some')" in text
    assert "privacy.clip_norm" in text and "privacy.noise_multiplier" in text
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb", "cpu-8gb"], "robust": {"combiner": "krum"}, "insiders": {"count": 2, "attack": "virus"}})
    text = str(error.value)
    assert "robust.combiner: one of" in text and "insiders.attack: one of sign_flip" in text
    with pytest.raises(ConfigError, match=r"insiders.count: fewer than half the fleet \(3 devices\)"):
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb", "cpu-8gb"], "insiders": {"count": 2, "attack": "bias"}})
    trial = TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb", "cpu-8gb"], "insiders": {"count": 1, "attack": "bias"}})
    assert trial.insider_count == 1


def test_an_instruct_trial_on_the_operators_own_files(tiny_backbone, tmp_path):
    from fedge.task.data import Dialogue, write_dialogues

    words = "food animal plant time body place person substance".split()
    dialogues = [Dialogue((("user", f"{a} {b}"), ("assistant", f"{b} {a}")), 0) for a in words for b in words]
    write_dialogues(tmp_path / "laptop.jsonl", dialogues[:20])  # each device its own file
    write_dialogues(tmp_path / "pi.jsonl", dialogues[20:48])
    write_dialogues(tmp_path / "test.jsonl", dialogues[48:])
    trial = {
        "name": "own", "backbone": str(tiny_backbone), "strategies": ["hetlora"], "fleet": ["cpu-16gb", "cpu-8gb"], "rounds": 1, "local_steps": 2, "batch_size": 4,
        "data": {"source": "files", "train": [str(tmp_path / "laptop.jsonl"), str(tmp_path / "pi.jsonl")], "test": str(tmp_path / "test.jsonl")},
        "task": {"kind": "instruct", "max_tokens": 16, "eval_samples": 4, "max_new_tokens": 4, "metric": "exact_match"},
        "planner": {"max_depth": 2, "ranks": [2]}, "target_accuracy": 0.5,
    }
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "trial", str(tmp_path / "trial.yaml"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["splits"]["0"]["agents"] == {"agent-0-cpu-16gb": 20, "agent-1-cpu-8gb": 28} and report["splits"]["0"]["test_examples"] == 16
    assert "pretrained exact_match" in (out / "report.md").read_text() and report["rows"][0]["final_loss"] > 0
    config = yaml.safe_load((out / "seed_0" / "hetlora" / "coordinator.yaml").read_text())
    assert config["task"]["kind"] == "instruct" and config["task"]["metric"] == "exact_match"
    # the same trial with one arm more, its directory now spelt relative: the finished run is kept, only the new
    # arm runs, the report covers both
    finished = (out / "seed_0" / "hetlora" / "coordinator" / "metrics.jsonl").stat().st_mtime_ns
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump({**trial, "strategies": ["hetlora", {"name": "hetlora", "learning_rate": 0.004}]}))
    result = subprocess.run([sys.executable, "-m", "fedge.shell.cli", "trial", "trial.yaml", "--out", "out"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "seed 0 hetlora: finished by an earlier invocation with these settings; kept" in result.stdout.replace("\n", " ")
    assert (out / "seed_0" / "hetlora" / "coordinator" / "metrics.jsonl").stat().st_mtime_ns == finished
    rerun = json.loads((out / "report.json").read_text())
    assert {row["strategy"] for row in rerun["rows"]} == {"hetlora", "hetlora lr=0.004"} and rerun["kept_runs"] == 1
    assert "which kept 1 of the 2 runs from earlier ones" in (out / "report.md").read_text()


def test_a_trial_names_its_task_and_data_consistently():
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "data": {"source": "chatterbot", "train_per_labels": 3}, "task": {"kind": "classify"}})
    assert "data.train_per_labels: unknown key" in str(error.value) and "chatterbot data is for the instruct task kind" in str(error.value)
    with pytest.raises(ConfigError, match="task: required with data.source: files"):
        TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "data": {"source": "files", "train": "a", "test": "b"}})
    fortunes = TrialConfig.from_dict({"strategies": ["hetlora"], "fleet": ["cpu-8gb", "cpu-16gb"], "data": {"source": "fortunes"}})
    assert fortunes.task_spec.labels[0] == "art" and fortunes.metric == "accuracy"
