"""Liveness from signed heartbeats: a device that goes silent stops holding up a round after the grace period, and
one that restarts mid-round gets its work again."""

import threading

import pytest

from tests.integration.helpers import coordinator_in_thread, credentials
from tests.integration.scripted import ScriptedAgent

pytestmark = pytest.mark.broker


def _coordinator(tmp_path, url, backbone, **overrides):
    settings = {"run_id": "live", "rounds": 1, "min_clients": 1, "round_deadline_s": 120}
    return coordinator_in_thread(tmp_path, url, backbone, settings | overrides)


def test_a_device_that_goes_silent_drops_out_after_the_grace_period(mosquitto, tiny_backbone, tmp_path):
    coordinator, thread, finished = _coordinator(tmp_path, mosquitto.url, tiny_backbone, rejoin_grace_s=4)
    worker = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a0"), heartbeat_s=1)
    silent = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a1"))  # says hello, then nothing: no heartbeat, no update
    worker.hello()
    silent.hello()
    worker.send(worker.update(1))
    thread.join(timeout=60)
    assert finished, "the run must end long before the 120 s round deadline"
    record = coordinator.run_dir.rounds()[-1]
    assert record["contributors"] == ["a0"]
    assert record["prepare_s"] < 15  # the silent device held up preparation for the grace period, not the deadline
    assert record["wall_s"] < 15
    worker.close()
    silent.close()


def test_a_device_that_restarts_mid_round_is_sent_its_work_again(mosquitto, tiny_backbone, tmp_path):
    coordinator, thread, finished = _coordinator(tmp_path, mosquitto.url, tiny_backbone, min_clients=2)
    first, other = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a0"), heartbeat_s=1), ScriptedAgent(mosquitto.url, credentials(tmp_path, "a1"), heartbeat_s=1)
    first.hello()
    other.hello()
    waiting = threading.Thread(target=other.state_for, args=(1,), daemon=True)  # says ready, then takes its state
    waiting.start()
    first.state_for(1)
    waiting.join(timeout=30)
    first.close()  # the process dies holding its round-1 work
    restarted = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a0"), heartbeat_s=1)
    restarted.hello()  # a restarted agent says hello again and is sent its assignment and state at once
    restarted.send(restarted.update(1))
    other.send(other.update(1))
    thread.join(timeout=60)
    assert finished
    record = coordinator.run_dir.rounds()[-1]
    assert record["contributors"] == ["a0", "a1"] and record["wall_s"] < 60
    restarted.close()
    other.close()
