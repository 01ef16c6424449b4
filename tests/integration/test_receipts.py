"""Nothing lost silently: the coordinator answers every update with a receipt; an agent whose receipt is lost sends
the update again, the coordinator takes it once, and the round's record counts the resend."""

import pytest

from fedge.coordinator.sender import Sender
from fedge.task.data import write_jsonl
from tests.integration.helpers import cli, coordinator_in_thread, credentials_args, shard

pytestmark = pytest.mark.broker


def test_a_lost_receipt_is_answered_again_and_counted(mosquitto, tiny_backbone, tmp_path, monkeypatch):
    dropped: set[tuple[str, int]] = set()
    receipt = Sender.receipt

    def loses_each_devices_first(self, agent_id, round_number, ref, again=False):
        if (agent_id, round_number) not in dropped and round_number == 1:
            dropped.add((agent_id, round_number))
            return None  # as if the broker dropped it
        return receipt(self, agent_id, round_number, ref, again)

    monkeypatch.setattr(Sender, "receipt", loses_each_devices_first)
    coordinator, thread, finished = coordinator_in_thread(tmp_path, mosquitto.url, tiny_backbone, {"run_id": "receipts", "rounds": 2, "min_clients": 2, "local_steps": 2, "batch_size": 4})
    agents = []
    for index in range(2):  # a1 trains 30 times as slowly: a0 waits for round 2 long enough to miss its receipt
        write_jsonl(tmp_path / f"a{index}.jsonl", shard(index))
        agents.append(cli("agent", "--broker", mosquitto.url, "--data", str(tmp_path / f"a{index}.jsonl"), *credentials_args(tmp_path, f"a{index}"), "--device-profile", "cpu-8gb",
                          "--heartbeat", "0.5", "--receipt-wait", "1", "--slowdown", str(1 + 29 * index), "--cache", str(tmp_path / "cache"), log=tmp_path / f"a{index}.log"))
    try:
        thread.join(timeout=240)
        assert finished, "the run did not finish"
        for agent in agents:
            assert agent.wait(timeout=60) == 0
    finally:
        for agent in agents:
            agent.kill()
    first, second = coordinator.run_dir.rounds()[1:3]
    assert dropped == {("a0", 1), ("a1", 1)}
    assert first["contributors"] == second["contributors"] == ["a0", "a1"]
    resent = (tmp_path / "a0.log").read_text().count("no answer to the round 1 update yet; sending it again")
    assert resent >= 1  # a0's receipt was lost and round 2 was slow to come
    # Each copy answered and counted in the record of the round it came in (round 1's, or round 2's if round 1 had
    # closed by then), and the update taken once.
    assert first["losses"]["resent_updates"] + second["losses"]["resent_updates"] == resent
    assert {key: second["losses"][key] for key in ("frames_dropped", "incomplete_messages")} == {"frames_dropped": 0, "incomplete_messages": 0}
