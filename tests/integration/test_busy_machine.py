"""A busy machine is not a failure: with every core oversubscribed twice over, the demo still completes with every
agent contributing every round, and leaves no process behind."""

import json
import subprocess
import sys

import psutil
import pytest

from tests.busy import have_stress_ng, oversubscribed

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture
def busy_machine():
    if not have_stress_ng():
        pytest.skip("stress-ng is not installed (scripts/setup.sh installs it)")
    with oversubscribed():
        yield


def test_the_demo_on_an_oversubscribed_machine_keeps_every_agent_in_every_round(tmp_path, busy_machine):
    run_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "fedge.shell.cli", "demo", "--run-dir", str(run_dir), "--rounds", "2", "--local-steps", "4", "--train-per-label", "24", "--test-per-label", "10"],
        capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "coordinator" / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in records] == [0, 1, 2]
    for record in records[1:]:
        assert len(record["contributors"]) == 4 and record["left_out"] == {}, record["left_out"]
    leftovers = [process.pid for process in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(process.info["cmdline"] or [])]
    assert not leftovers, "child processes outlived the demo"
