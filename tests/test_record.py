"""A round is committed the moment it is aggregated; its record reaches metrics.jsonl once scored, in round order,
and a run that died before a committed round was scored scores it when it resumes."""

from concurrent.futures import Future

import numpy as np
import pytest

from fedge.coordinator.record import RunRecorder
from fedge.coordinator.reports import RunDirectory
from fedge.strategies.server_optimizer import ServerOptimizer


class _Scores:
    """Scores a state by the sum of its values; ``held`` scorings never finish (a process killed mid-evaluation)."""

    def __init__(self, held: bool = False):
        self.held = held
        self.pending: list[Future] = []

    def score(self, label, arrays) -> Future:
        scoring = Future()
        if self.held:
            self.pending.append(scoring)
        else:
            scoring.set_result({"accuracy": float(sum(value.sum() for value in arrays.values())), "loss": 1.0, "metric": "accuracy"})
        return scoring

    def close(self) -> None:
        pass


def _state(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), value, np.float32)}


def test_records_are_written_in_round_order_once_scored(tmp_path):
    scores = _Scores(held=True)
    recorder = RunRecorder(RunDirectory(tmp_path), scores, {})
    recorder.record_start(_state(0.0))
    recorder.commit(1, _state(0.25), {"contributors": ["a0"]})
    assert recorder.run_dir.rounds() == []  # committed, not yet scored
    assert recorder.run_dir.latest_global()[0] == 1
    for scoring, accuracy in zip(scores.pending, (0.0, 1.0)):
        scoring.set_result({"accuracy": accuracy, "loss": 1.0})
    assert [(record["round"], record["accuracy"]) for record in recorder.run_dir.rounds()] == [(0, 0.0), (1, 1.0)]
    assert recorder.run_dir.rounds()[1]["contributors"] == ["a0"] and recorder.run_dir.pending_records() == []


def test_a_round_committed_but_not_scored_is_scored_on_resume(tmp_path):
    crashed = RunRecorder(RunDirectory(tmp_path), _Scores(), {})
    crashed.record_start(_state(0.0))
    crashed.evaluator = _Scores(held=True)  # the process dies while round 1 is evaluated
    crashed.commit(1, _state(0.25), {"contributors": ["a0", "a1"]})
    assert [record["round"] for record in crashed.run_dir.rounds()] == [0]

    resumed = RunRecorder(RunDirectory(tmp_path), _Scores(), {})
    start, arrays = resumed.starting_point(resume=True)
    resumed.flush()
    assert start == 2 and np.array_equal(arrays["w"], _state(0.25)["w"])
    records = resumed.run_dir.rounds()
    assert [record["round"] for record in records] == [0, 1]
    assert records[1]["contributors"] == ["a0", "a1"] and records[1]["accuracy"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="--resume"):
        RunRecorder(RunDirectory(tmp_path), _Scores(), {}).starting_point(resume=False)


def test_the_server_optimisers_moments_are_committed_with_each_round_and_resumed(tmp_path):
    """FedAvgM's velocity after round 2 is what a resumed run steps round 3 with: the same state as a run that never
    stopped."""
    momentum = ServerOptimizer("fedavgm", learning_rate=1.0, beta1=0.5)
    whole = RunRecorder(RunDirectory(tmp_path / "whole"), _Scores(), {}, momentum)
    crashed = RunRecorder(RunDirectory(tmp_path / "crashed"), _Scores(), {}, momentum)
    states = {"whole": _state(0.0), "crashed": _state(0.0)}
    for recorder, name in ((whole, "whole"), (crashed, "crashed")):
        recorder.record_start(states[name])
        for round_number in (1, 2):
            states[name] = recorder.moments.step(states[name], {"w": states[name]["w"] + 1.0})
            recorder.commit(round_number, states[name], {"contributors": ["a0"]})
    np.testing.assert_allclose(states["whole"]["w"], 2.5)  # 1, then 1 + (0.5·1 + 1)
    resumed = RunRecorder(RunDirectory(tmp_path / "crashed"), _Scores(), {}, momentum)
    start, arrays = resumed.starting_point(resume=True)
    assert start == 3 and np.array_equal(arrays["w"], states["whole"]["w"])
    after_resume = resumed.moments.step(arrays, {"w": arrays["w"] + 1.0})
    uninterrupted = whole.moments.step(states["whole"], {"w": states["whole"]["w"] + 1.0})
    np.testing.assert_allclose(after_resume["w"], uninterrupted["w"])
    np.testing.assert_allclose(uninterrupted["w"], 2.5 + 0.5 * 1.5 + 1.0)
    for recorder in (whole, resumed):
        recorder.flush()
