"""Bad input from enrolled devices over a real broker: each is refused with a reason, and the run goes on with the
valid updates. (Unauthenticated input is the fuzz test's: it is never answered.)"""

import json
import threading
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.task.data import write_jsonl
from fedge.task.wordnet import Example
from fedge.transport import BrokerConfig, MqttTransport
from fedge.wire import Hello, topics
from fedge.profiles import load_catalogue_profile
from tests.integration.helpers import await_connected, credentials, enrolled_fleet
from tests.integration.scripted import ScriptedAgent

pytestmark = pytest.mark.broker


def test_every_kind_of_bad_update_is_rejected_and_the_run_goes_on(any_broker, tiny_backbone, tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [Example("food of time", i % 8) for i in range(8)])
    config = CoordinatorConfig.from_dict({
        "run_id": "bad", "run_dir": str(tmp_path / "run"), "broker": any_broker.url, "backbone": str(tiny_backbone),
        "enrolment": str(enrolled_fleet(tmp_path, ("good", "slow", "liar"))), "eval_data": str(tmp_path / "test.jsonl"),
        "rounds": 2, "min_clients": 1, "expected_clients": 2, "round_deadline_s": 8, "registration_timeout_s": 30,
        "max_update_norm": 100.0, "planner": {"max_depth": 1, "ranks": [2]}, "devices": {"cpu": {"rank": 2, "depth": 1}},
    })
    failures = []
    coordinator = Coordinator(config)
    thread = threading.Thread(target=lambda: failures.append(None) if coordinator.run() else None, daemon=True)
    thread.start()
    await_connected(coordinator)
    good, slow = ScriptedAgent(any_broker.url, credentials(tmp_path, "good")), ScriptedAgent(any_broker.url, credentials(tmp_path, "slow"))
    liar = ScriptedAgent(any_broker.url, credentials(tmp_path, "liar"))
    good.hello()
    slow.hello()
    profile = load_catalogue_profile("cpu-8gb")
    liar.send(Hello("liar", replace(profile, gflops=None), 20))  # the hello that used to end a run
    liar.expect_reject("bad_profile")
    liar.send(Hello("liar", replace(profile, ram_total_bytes=-1, usable_memory_fraction=7.0), 20))
    assert "ram_total_bytes" in liar.expect_reject("bad_profile").detail
    good.state_for(1)
    slow.state_for(1)

    valid = good.update(1)
    key = next(iter(valid.tensors))
    for changes, reason in [
        ({"tensors": {"not.a.lora.key": np.zeros(3, np.float32)}}, "bad_keys"),
        ({"tensors": {**valid.tensors, key: valid.tensors[key].T.copy()}}, "bad_shape"),
        ({"tensors": {**valid.tensors, key: np.full_like(valid.tensors[key], np.nan)}}, "not_finite"),
        ({"tensors": {**valid.tensors, key: np.full_like(valid.tensors[key], 1000.0)}}, "norm_too_large"),
        ({"num_examples": 10_000}, "bad_count"),  # more than it registered with
        ({"round": 5}, "wrong_round"),
    ]:
        good.send(good.update(1, **changes))
        good.expect_reject(reason)
    good.send(valid)
    good.expect_receipt(valid)
    good.send(valid)  # sealed again (its receipt lost, say): answered again, taken once
    good.expect_receipt(valid)
    good.send(good.update(1))  # another update for a round it already contributed to
    good.expect_reject("duplicate")

    # slow misses round 1's deadline; its round-1 update then arrives during round 2
    slow_round1 = slow.update(1)
    slow.state_for(2)
    slow.send(slow_round1)
    slow.expect_reject("wrong_round")
    good.send(good.update(2))
    slow.send(slow.update(2))
    thread.join(timeout=60)
    assert not thread.is_alive() and failures == [None], "the coordinator must finish the run"

    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["contributors"] == ["good"]
    assert rounds[2]["contributors"] == ["good", "slow"]
    assert set(rounds[2]["update_norms"]) == {"good", "slow"} and all(0 < norm < 100 for norm in rounds[2]["update_norms"].values())
    assert len(json.loads((tmp_path / "run" / "plan.json").read_text())["devices"]) == 2  # the liar was never planned
    for agent in (good, slow, liar):
        agent.close()


def test_an_unsigned_hello_is_dropped_unanswered(mosquitto, tiny_backbone, tmp_path):
    """An anonymous client naming an enrolled device cannot reach a secured coordinator: its hello is dropped and
    counted, never answered, and no device is registered."""
    write_jsonl(tmp_path / "test.jsonl", [Example("food of time", i % 8) for i in range(8)])
    config = CoordinatorConfig.from_dict({
        "run_id": "v", "run_dir": str(tmp_path / "run"), "broker": mosquitto.url, "backbone": str(tiny_backbone),
        "enrolment": str(enrolled_fleet(tmp_path)), "eval_data": str(tmp_path / "test.jsonl"),
        "min_clients": 1, "expected_clients": 1, "registration_timeout_s": 3,
    })
    coordinator = Coordinator(config)
    anonymous = MqttTransport(BrokerConfig.from_url(mosquitto.url), "anonymous")
    anonymous.subscribe(topics.downlink("a0"))
    anonymous.connect()
    threading.Timer(1.0, lambda: anonymous.publish(topics.uplink("a0"), Hello("a0", load_catalogue_profile("cpu-8gb"), 20))).start()
    with pytest.raises(RuntimeError, match="only 0 agents online"):
        coordinator.run()
    assert anonymous.receive(timeout_s=1.0) is None  # no reply to a forger
    assert coordinator.receiver.refusals.counts["unauthenticated"] == 1
    anonymous.close()
