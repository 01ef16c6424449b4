"""The main job at reduced size, on the real SmolLM2-135M backbone and real WordNet data: it must learn."""

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_demo_fleet_learns_well_above_the_pretrained_accuracy(tmp_path):
    run_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "fedge.shell.cli", "demo", "--run-dir", str(run_dir), "--rounds", "3", "--local-steps", "8", "--train-per-label", "48", "--test-per-label", "20"],
        capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    federated = summary["federated_accuracy"]
    assert len(federated) == 4
    assert federated[-1] > federated[0] + 0.25, federated  # 8 classes: chance is 0.125
    assert summary["centralised_accuracy"][-1] > federated[0] + 0.25
    assert (run_dir / "coordinator" / "adapter" / "adapter_model.safetensors").exists()
    plan = json.loads((run_dir / "coordinator" / "plan.json").read_text())
    assert all(device["feasible"] and device["memory"]["total"] <= device["budget_bytes"] for device in plan["devices"])
