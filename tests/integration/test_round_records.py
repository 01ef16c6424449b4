"""What the coordinator's core promises a round: it never goes deaf while it evaluates, it encodes each distinct
state once whatever the number of devices that share it, and every planned device that does not contribute has its
reason in the round's record."""

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from fedge.coordinator.evaluation import GlobalModel
from fedge.wire import Reject
from tests.integration.helpers import coordinator_in_thread, credentials
from tests.integration.scripted import ScriptedAgent

pytestmark = pytest.mark.broker

EVALUATION_S = 6.0  # how long each evaluation takes in the deafness test: twice the grace period


@contextmanager
def _answering_fleet(url: str, tmp_path, count: int, rounds: int, heartbeat_s: float):
    """``count`` scripted agents that heartbeat, say hello and answer each of ``rounds`` states with an update, as
    real agents would (each from its own thread); closed when the block ends."""
    agents = [ScriptedAgent(url, credentials(tmp_path, f"a{index}"), heartbeat_s=heartbeat_s) for index in range(count)]

    def answer(agent: ScriptedAgent) -> None:
        for round_number in range(1, rounds + 1):
            agent.send(agent.update(round_number))

    for agent in agents:
        agent.hello()
    answering = [threading.Thread(target=answer, args=(agent,), daemon=True) for agent in agents]
    for worker in answering:
        worker.start()
    try:
        yield agents
    finally:
        for worker in answering:
            worker.join(timeout=10)
        for agent in agents:
            agent.close()


def test_a_slow_evaluation_leaves_no_live_device_behind(mosquitto, tiny_backbone, tmp_path, monkeypatch):
    """Each evaluation takes longer than twice the grace period; devices heartbeat throughout. Reading, and so
    liveness, goes on while the coordinator evaluates: every device contributes to every round."""
    evaluate = GlobalModel.evaluate

    def slow(self, parts):
        time.sleep(EVALUATION_S)
        return evaluate(self, parts)

    monkeypatch.setattr(GlobalModel, "evaluate", slow)
    coordinator, thread, finished = coordinator_in_thread(tmp_path, mosquitto.url, tiny_backbone, {"run_id": "deaf", "rounds": 3, "min_clients": 1, "rejoin_grace_s": 3, "round_deadline_s": 120})
    with _answering_fleet(mosquitto.url, tmp_path, count=2, rounds=3, heartbeat_s=0.5):
        thread.join(timeout=180)
    assert finished
    rounds = coordinator.run_dir.rounds()
    assert [record["round"] for record in rounds] == [0, 1, 2, 3]
    for record in rounds[1:]:
        assert record["contributors"] == ["a0", "a1"] and record["left_out"] == {}, record["left_out"]
        assert record["message_wait_s"]["max"] < EVALUATION_S  # no message waited out an evaluation


def test_devices_with_the_same_view_share_one_encoded_state(mosquitto, tiny_backbone, tmp_path):
    coordinator, thread, finished = coordinator_in_thread(tmp_path, mosquitto.url, tiny_backbone, {"run_id": "fan", "rounds": 2, "min_clients": 3, "expected_clients": 3, "round_deadline_s": 120})
    with _answering_fleet(mosquitto.url, tmp_path, count=3, rounds=2, heartbeat_s=1) as agents:
        thread.join(timeout=120)
        states = [agent.states[2] for agent in agents]
    assert finished
    for record in coordinator.run_dir.rounds()[1:]:
        assert record["contributors"] == ["a0", "a1", "a2"]
        assert record["fanout"]["distinct_states"] == 1 and record["fanout"]["cpu_s"] >= 0  # three devices, one pinned view
    assert all(np.array_equal(states[0].tensors[key], state.tensors[key]) for state in states for key in state.tensors)
    assert [state.agent_id for state in states] == ["a0", "a1", "a2"]  # each took the shared state as its own


def test_every_planned_device_left_out_of_a_round_has_its_reason(mosquitto, tiny_backbone, tmp_path):
    coordinator, thread, finished = coordinator_in_thread(tmp_path, mosquitto.url, tiny_backbone, {"run_id": "why", "rounds": 1, "min_clients": 1, "expected_clients": 4, "rejoin_grace_s": 4, "round_deadline_s": 120})
    worker, refuser, wrong = (ScriptedAgent(mosquitto.url, credentials(tmp_path, f"a{index}"), heartbeat_s=1) for index in range(3))
    silent = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a3"))  # says hello, then nothing at all
    for agent in (worker, refuser, wrong, silent):
        agent.hello()
    taking = [threading.Thread(target=agent.state_for, args=(1,), daemon=True) for agent in (worker, refuser, wrong)]  # each says ready, then takes its state
    for reader in taking:
        reader.start()
    for reader in taking:
        reader.join(timeout=60)
    refuser.send(Reject("a1", "cannot_train", "out of battery", 1))
    bad = wrong.update(1)
    wrong.send(wrong.update(1, tensors={key: np.zeros((1, 1), np.float32) for key in bad.tensors}))
    worker.send(worker.update(1))
    thread.join(timeout=120)
    assert finished
    record = coordinator.run_dir.rounds()[-1]
    assert record["contributors"] == ["a0"]
    assert set(record["participants"]) == {"a0", "a1", "a2", "a3"} == set(record["contributors"]) | set(record["left_out"])
    reasons = record["left_out"]
    assert reasons["a1"].startswith("refused by agent: cannot_train") and reasons["a2"] == "bad_shape"
    assert "silent: nothing arrived for" in reasons["a3"]
    for agent in (worker, refuser, wrong, silent):
        agent.close()
