"""``fedge trial`` end to end on the tiny backbone: same split for every strategy, a report with table and plots."""

import json
import subprocess
import sys

import pytest
import yaml

from safetensors.numpy import load_file

from coordinator.config import ConfigError
from fedge.strategies.base import C_SUFFIX
from fedge.trial.config import TrialConfig

pytestmark = pytest.mark.broker


def test_a_trial_compares_strategies_on_one_split_and_writes_its_report(tiny_backbone, tmp_path):
    trial = {
        "name": "tiny", "backbone": str(tiny_backbone), "strategies": ["hetlora", "ce-lora"],
        "fleet": ["cpu-16gb", "cpu-8gb"], "rounds": 2, "local_steps": 2, "batch_size": 4,
        "data": {"train_per_label": 6, "test_per_label": 2, "alpha": 1.0, "min_examples": 8},
        "planner": {"max_depth": 2, "ranks": [2, 4]}, "target_accuracy": 0.99,
    }
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "fedge.cli", "trial", str(tmp_path / "trial.yaml"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    rows = {row["strategy"]: row for row in report["rows"]}
    assert set(rows) == {"hetlora", "ce-lora"}
    assert all(run["exit"] == 0 for run in report["runs"])
    assert rows["ce-lora"]["up_per_client_round"] < rows["hetlora"]["up_per_client_round"]
    core_updates = list((out / "seed_0" / "ce-lora").rglob("updates/round_*/*.safetensors"))
    assert core_updates and all(set(load_file(path)) and all(key.endswith(C_SUFFIX) for key in load_file(path)) for path in core_updates)  # r×r cores only
    assert rows["hetlora"]["final_global"] == rows["hetlora"]["final_global"]  # a number: hetlora has a global model
    assert rows["ce-lora"]["final_devices"] >= 0 and rows["hetlora"]["rounds_to_target"] is None
    assert sum(map(sum, report["splits"]["0"]["histograms"].values())) == 8 * 6  # one split, every training example once
    seeds_dir = out / "seed_0"
    for run in ("hetlora", "ce-lora"):
        config = yaml.safe_load((seeds_dir / run / "coordinator.yaml").read_text())
        assert config["eval_data"] == str(seeds_dir / "data" / "test.jsonl") and config["seed"] == 0
    markdown = (out / "report.md").read_text()
    assert "| hetlora |" in markdown and "agent-0-cpu-16gb" in markdown
    assert (out / "accuracy.png").stat().st_size > 5000 and (out / "accuracy_vs_bytes.png").stat().st_size > 5000


def test_trial_config_errors_are_collected():
    with pytest.raises(ConfigError) as error:
        TrialConfig.from_dict({"strategies": ["fedprox", {"name": "lora-fair", "options": {"solver": "x"}}], "fleet": ["cpu-8gb"], "colour": 1, "device_eval": "some"})
    text = str(error.value)
    assert "fedprox" in text and "solver" in text and "at least two" in text and "colour: unknown key" in text and "device_eval" in text
