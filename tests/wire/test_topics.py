import pytest

from fedge.wire import topics


def test_topic_layout():
    assert topics.uplink("a-1") == "fedge/v1/agents/a-1/up"
    assert topics.downlink("a-1") == "fedge/v1/agents/a-1/down"
    assert topics.status("a-1") == "fedge/v1/agents/a-1/status"
    assert topics.agent_of("fedge/v1/agents/a-1/up") == "a-1"
    assert topics.agent_of("fedge/v1/agents/a/b/up") is None
    assert topics.agent_of("elsewhere/x") is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x" * 65, "sp ace"])
def test_agent_ids_cannot_inject_topic_levels(bad):
    with pytest.raises(ValueError):
        topics.uplink(bad)
