"""A round is committed the moment it is aggregated; its record reaches metrics.jsonl once scored, in round order,
and a run that died before a committed round was scored scores it when it resumes."""

from concurrent.futures import Future

import numpy as np
import pytest

from fedge.coordinator.record import RunRecorder
from fedge.coordinator.reports import RunDirectory


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
