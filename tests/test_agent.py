import pytest

from edge_agent.agent import EdgeAgent, pick_quantization
from fedge.task.wordnet import Example
from fedge.transport import BrokerConfig
from fedge.wire import Assignment, BackboneSpec, LoraSpec
from profiles import load_catalogue_profile


@pytest.mark.parametrize(
    "requested, device, bnb, expected",
    [("nf4", "cuda", True, "nf4"), ("nf4", "cuda", False, "fp32"), ("nf4", "cpu", True, "fp32"), ("int8", "cpu", True, "fp32"), ("bf16", "cuda", True, "bf16"), ("bf16", "cpu", True, "fp32")],
)
def test_quantization_follows_what_the_backend_can_run(requested, device, bnb, expected):
    assert pick_quantization(requested, device, bnb) == expected


def test_agent_refuses_a_backbone_whose_digest_differs(tiny_backbone):
    agent = EdgeAgent("a", BrokerConfig(), [Example("food", 2)], load_catalogue_profile("cpu-8gb"))
    assignment = Assignment("r", 1, "a", BackboneSpec(str(tiny_backbone), "0" * 64, "fp32"), LoraSpec(("q_proj",), (3,), (2,), 2.0), 1, 1, 1e-3, 0.0, 0)
    with pytest.raises(ValueError, match="sha256"):
        agent._prepare(assignment)
