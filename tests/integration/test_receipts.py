"""Nothing lost silently: the coordinator answers every update with a receipt; an agent whose receipt is lost sends
the update again, the coordinator takes it once, and the round's record counts the resend."""

import time

import pytest

from fedge.coordinator.sender import Sender
from fedge.task.data import write_jsonl
from tests.integration.helpers import cli, coordinator_in_thread, credentials_args, shard

pytestmark = pytest.mark.broker


RESENT = "no answer to the round 1 update yet; sending it again"


def test_a_lost_receipt_is_answered_again_and_counted(mosquitto, tiny_backbone, tmp_path, monkeypatch):
    dropped: list[str] = []  # the devices whose round 1 receipt was lost, in the order their updates came
    receipt = Sender.receipt

    def loses_each_devices_first(self, agent_id, round_number, ref, again=False):
        if round_number == 1 and agent_id not in dropped:
            dropped.append(agent_id)
            if len(dropped) == 2:  # round 1 stays open until the first device has missed its receipt and resent
                first_log = tmp_path / f"{dropped[0]}.log"
                deadline = time.monotonic() + 120
                while RESENT not in first_log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.1)
            return None  # as if the broker dropped it
        return receipt(self, agent_id, round_number, ref, again)

    monkeypatch.setattr(Sender, "receipt", loses_each_devices_first)
    coordinator, thread, finished = coordinator_in_thread(tmp_path, mosquitto.url, tiny_backbone, {"run_id": "receipts", "rounds": 2, "min_clients": 2, "local_steps": 2, "batch_size": 4})
    agents = []
    for index in range(2):
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
        agents.append(cli("agent", "--broker", mosquitto.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", "cpu-8gb",
                          "--heartbeat", "0.5", "--receipt-wait", "1", "--cache", str(tmp_path / "cache"), log=tmp_path / f"a{index}.log"))
    try:
        thread.join(timeout=240)
        assert finished, "the run did not finish"
        for agent in agents:
            assert agent.wait(timeout=60) == 0
    finally:
        for agent in agents:
            agent.kill()
    first, second = coordinator.run_dir.rounds()[1:3]
    assert sorted(dropped) == ["a0", "a1"]
    assert first["contributors"] == second["contributors"] == ["a0", "a1"]
    resent = sum((tmp_path / f"{agent_id}.log").read_text().count(RESENT) for agent_id in dropped)
    assert (tmp_path / f"{dropped[0]}.log").read_text().count(RESENT) >= 1  # its receipt was lost while round 1 stayed open
    # Each copy answered and counted in the record of the round it came in (round 1's, or round 2's if round 1 had
    # closed by then), and the update taken once.
    assert first["losses"]["resent_updates"] + second["losses"]["resent_updates"] == resent
    assert {key: second["losses"][key] for key in ("frames_dropped", "incomplete_messages")} == {"frames_dropped": 0, "incomplete_messages": 0}
