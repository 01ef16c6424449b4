"""Asynchronous and semi-synchronous rounds over Mosquitto: a slow device never holds a round up, its stale update
counts less, and semi-sync aggregates on its period."""

import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.integration.helpers import coordinator_in_thread, credentials
from tests.integration.scripted import ScriptedAgent

pytestmark = pytest.mark.broker


def _run(tmp_path, url, backbone, **overrides):
    return coordinator_in_thread(tmp_path, url, backbone, {"run_id": "buffered", "min_clients": 2, "round_deadline_s": 60, "max_weight_share": 1.0} | overrides)


def test_async_rounds_go_on_without_the_slow_device_and_its_stale_update_counts_less(mosquitto, tiny_backbone, tmp_path):
    coordinator, thread, finished = _run(tmp_path, mosquitto.url, tiny_backbone, rounds=3, round_mode="async", buffer_size=1, max_staleness=3)
    fast, slow = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a0"), heartbeat_s=1), ScriptedAgent(mosquitto.url, credentials(tmp_path, "a1"), heartbeat_s=1)
    fast.hello()
    slow.hello()
    taking = threading.Thread(target=slow.state_for, args=(1,), daemon=True)
    taking.start()
    fast.send(fast.update(1))  # version 1: the fast device alone
    fast.send(fast.update(2))  # version 2: sent its new work at once, it does not wait for the slow one
    taking.join(timeout=30)
    stale = slow.update(1)
    slow.send(stale)  # trained on version 0, aggregated into version 3: staleness 2
    thread.join(timeout=60)
    assert finished
    rounds = coordinator.run_dir.rounds()[1:]
    assert [r["contributors"] for r in rounds] == [["a0"], ["a0"], ["a1"]]
    assert [r["staleness"] for r in rounds] == [{"a0": 0}, {"a0": 0}, {"a1": 2}]
    assert rounds[2]["discount"] == pytest.approx(3 ** -0.5, abs=1e-4)
    assert rounds[0]["bytes_down"]["a1"] > 1000 and set(rounds[1]["bytes_down"]) == {"a0"}  # only a0 had new work
    before, after = (load_file(coordinator.run_dir.path / "globals" / f"round_{index:03d}.safetensors") for index in (2, 3))
    key = next(k for k in sorted(stale.tensors) if k.endswith("lora_A.weight"))  # HetLoRA's aggregate of one A is that A (B is rescaled)
    np.testing.assert_allclose(after[key], before[key] + 3 ** -0.5 * (stale.tensors[key] - before[key]), rtol=1e-4, atol=1e-6)
    fast.close()
    slow.close()


def test_semi_sync_aggregates_on_its_period_and_refuses_updates_beyond_the_staleness_bound(mosquitto, tiny_backbone, tmp_path):
    coordinator, thread, finished = _run(tmp_path, mosquitto.url, tiny_backbone, rounds=2, round_mode="semi-sync", buffer_size=1, max_staleness=0, aggregation_period_s=3)
    fast, slow = ScriptedAgent(mosquitto.url, credentials(tmp_path, "a0"), heartbeat_s=1), ScriptedAgent(mosquitto.url, credentials(tmp_path, "a1"), heartbeat_s=1)
    fast.hello()
    slow.hello()
    taking = threading.Thread(target=slow.state_for, args=(1,), daemon=True)
    taking.start()
    started = time.time()
    fast.send(fast.update(1))
    fast.state_for(2)  # the buffer was full at once, but it is aggregated only when the period ends
    assert time.time() - started >= 2.5
    taking.join(timeout=30)
    slow.send(slow.update(1))  # trained on version 0 while version 1 exists: staleness 1 > 0
    slow.expect_reject("stale")
    slow.send(slow.update(2))  # it was sent version 1's work at once
    fast.send(fast.update(2))
    thread.join(timeout=60)
    assert finished
    rounds = coordinator.run_dir.rounds()[1:]
    assert rounds[0]["contributors"] == ["a0"] and rounds[0]["wall_s"] >= 2.5
    assert sorted(rounds[1]["contributors"]) == ["a0", "a1"] and rounds[1]["staleness"] == {"a0": 0, "a1": 0}
    fast.close()
    slow.close()
