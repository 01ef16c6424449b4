"""A state shared by several devices is signed once: each device takes it only when its own signed assignment names
its digest, and nothing else may travel on the shared stream."""

import time

import numpy as np
import pytest

from fedge.trust.downlink import DownlinkCodec
from fedge.trust.enrolment import COORDINATOR_ID, Credentials
from fedge.trust.keys import new_private_key, private_key_text, public_key_text
from fedge.wire import Assignment, BackboneSpec, GlobalState, LoraSpec, topics
from fedge.wire.codec import encode_message
from fedge.wire.envelope import SHARED_STREAM, Signer, Verifier
from fedge.wire.errors import ForgedError
from fedge.wire.sealing import SignedCodec, payload_digest
from fedge.task.wordnet import WORDNET_TASK

RUN = "run-1"


class _Device:
    def __init__(self, agent_id: str, coordinator_key):
        self.agent_id = agent_id
        credentials = Credentials(agent_id, private_key_text(new_private_key()), public_key_text(coordinator_key), "user", "password")
        self.codec = DownlinkCodec(credentials)
        self.codec.run = RUN
        self.downlink = topics.downlink(agent_id)


def _coordinator_codec(key) -> SignedCodec:
    return SignedCodec(Signer(COORDINATOR_ID, key), Verifier({}.get), run=RUN)


def _assignment(agent_id: str, digest: str) -> Assignment:
    return Assignment(RUN, 2, agent_id, BackboneSpec("b", "0" * 64, "fp32"), LoraSpec(("q_proj",), (1,), (2,), 1.0), WORDNET_TASK, 1, 1, 1e-3, time.time() + 60, 0, state_digest=digest)


@pytest.fixture
def fleet():
    key = new_private_key()
    return _coordinator_codec(key), _Device("a0", key), _Device("a1", key)


def test_one_sealed_state_is_taken_by_every_device_whose_assignment_names_it(fleet):
    coordinator, a0, a1 = fleet
    state = GlobalState(RUN, 2, "", False, {}, {"x": np.ones((2, 3), np.float32)})
    sealed, digest = coordinator.seal_shared(state)
    for device in (a0, a1):
        device.codec.open(device.downlink, coordinator.seal(device.downlink, _assignment(device.agent_id, digest)))
        taken = device.codec.open(device.downlink, sealed)  # the very same bytes for both
        assert taken.agent_id == device.agent_id and taken.round == 2 and np.array_equal(taken.tensors["x"], state.tensors["x"])


def test_a_shared_state_no_assignment_named_is_refused(fleet):
    coordinator, a0, _ = fleet
    sealed, digest = coordinator.seal_shared(GlobalState(RUN, 2, "", False, {}, {"x": np.ones(3, np.float32)}))
    with pytest.raises(ForgedError):
        a0.codec.open(a0.downlink, sealed)  # no assignment yet
    other, _ = coordinator.seal_shared(GlobalState(RUN, 2, "", False, {}, {"x": np.zeros(3, np.float32)}))
    a0.codec.open(a0.downlink, coordinator.seal(a0.downlink, _assignment("a0", digest)))
    with pytest.raises(ForgedError):
        a0.codec.open(a0.downlink, other)  # another view: its assignment named a different digest


def test_only_a_state_may_travel_on_the_shared_stream_and_only_to_devices(fleet):
    coordinator, a0, _ = fleet
    assignment = encode_message(_assignment("a0", ""))
    with pytest.raises(ForgedError):  # an assignment on the shared stream would be any device's
        a0.codec.open(a0.downlink, coordinator.signer.seal(a0.downlink, RUN, assignment, SHARED_STREAM))
    devices_key = new_private_key()
    receiving = Verifier({"a0": devices_key.public_key()}.get)  # a coordinator's verifier: no shared stream
    with pytest.raises(ForgedError):
        receiving.open(topics.uplink("a0"), Signer("a0", devices_key).seal(topics.uplink("a0"), RUN, b"x", SHARED_STREAM))


def test_a_state_naming_no_device_signed_for_one_downlink_is_that_device_s(fleet):
    coordinator, a0, a1 = fleet
    encoded = encode_message(GlobalState(RUN, 3, "", True, {}, {"x": np.ones(2, np.float32)}))
    assert a0.codec.open(a0.downlink, coordinator.seal_encoded(a0.downlink, encoded)).agent_id == "a0"
    with pytest.raises(ForgedError):
        a1.codec.open(a1.downlink, coordinator.seal_encoded(a0.downlink, encoded))  # a0's copy is not a1's
    assert payload_digest(encoded) == payload_digest(bytes(encoded))
