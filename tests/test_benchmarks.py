"""Every benchmark's quick mode runs, so none rots when the code around it changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _quick(script: str, *args: str, timeout: int = 600) -> str:
    done = subprocess.run([sys.executable, script, "--quick", *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.broker
def test_wire_benchmark_quick_mode_prints_goodput_against_mosquitto_pub():
    out = _quick("wire.py")
    assert "stress: rank 64, all layers" in out and "goodput vs mosquitto_pub" in out and "×" in out


@pytest.mark.broker
def test_backbone_delivery_benchmark_quick_mode_prints_goodput_and_resume():
    out = _quick("backbone_delivery.py")
    assert "goodput vs mosquitto_pub/sub" in out and "killed after" in out and "nf4" in out


def test_aggregation_benchmark_quick_mode_times_every_strategy():
    out = _quick("aggregation.py")
    assert "flexlora" in out.lower() and "hetlora" in out.lower()
    scale = out[out.index("Server step at scale"):]
    flexlora = next(line for line in scale.splitlines() if "flexlora" in line)
    gap = float(flexlora.split("│")[5])
    assert gap < 1e-3 and "fedex-lora" in scale  # the range finder matches the exact truncation
    assert "floor on this machine" in scale and "GFLOP/s" in scale and "× floor" in scale


@pytest.mark.slow
@pytest.mark.parametrize("script", ["calibrate.py", "planner_accuracy.py", "export.py"])
def test_model_benchmarks_quick_mode_runs_on_the_real_model(script):
    out = _quick(script, timeout=1200)
    assert ("ms/example" if script == "export.py" else "MiB") in out


@pytest.mark.broker
def test_hostile_benchmark_quick_mode_prints_flood_rate_signing_overhead_and_rss():
    out = _quick("hostile.py")
    assert "signing and checking overhead" in out and "handled/s against" in out and "RSS before the flood" in out


@pytest.mark.broker
def test_fleet_load_benchmark_quick_mode_runs_a_simulated_fleet_through_its_rounds():
    out = _quick("fleet_load.py")
    figures = [json.loads(line) for line in out.splitlines() if line.startswith('{"agents"')]
    assert len(figures) == 1 and figures[0]["completed_rounds"] == 2 and figures[0]["lost_without_reason"] == [0, 0], figures
    assert len(figures[0]["distinct_states"]) == 2 and min(figures[0]["distinct_states"]) >= 1 and figures[0]["message_wait_p99_s"] >= figures[0]["message_wait_p50_s"] >= 0, figures
    assert "server overhead per round" in out and "round wall (× training)" in out and "message wait p50 / p99" in out and "(distinct states; × for one encoding per device)" in out


def test_planner_scale_benchmark_quick_mode_prints_the_cost_per_device_against_the_smallest_fleet():
    out = _quick("planner_scale.py")
    assert "1,000" in out and "all different" in out and "×" in out
    assert "fedge plan on 1,000 devices" in out and "starting the command" in out


@pytest.mark.slow
@pytest.mark.broker
def test_insiders_benchmark_quick_mode_runs_a_trial_with_a_compromised_device_under_both_rules():
    out = _quick("insiders.py", timeout=1200)
    assert "sign_flip (1 of 4)" in out and "clean" in out and "Δ honest alone" in out
    assert "fleet of 4, sign_flip, default rules" in out and "outliers named ['agent-0-laptop-rtx3060-6gb']" in out  # the insider is named


@pytest.mark.slow
def test_cuda_check_quick_mode_runs_its_path_on_the_cpu_with_random_weights(tmp_path):
    out = _quick("cuda_check.py", "--device", "cpu", "--random-weights", timeout=1200)
    assert "its architecture with random weights" in out and "measured against the planner" in out and "nothing written" in out
    assert "nf4 D8 r16 qv b8 s128" in out and "bf16 D8 r16 qv b8 s128" in out


def test_cuda_check_without_cuda_says_so_and_fails():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: scripts/cuda_check.sh would measure it")
    done = subprocess.run(["bash", str(BENCHMARKS.parent / "scripts" / "cuda_check.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device here" in done.stderr
    direct = subprocess.run([sys.executable, "cuda_check.py"], cwd=BENCHMARKS, capture_output=True, text=True, timeout=120)
    assert direct.returncode == 2 and "no CUDA device here" in direct.stdout
