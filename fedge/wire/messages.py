"""Typed, versioned messages: one frozen dataclass per kind.

Tensor-carrying messages (``AdapterUpdate``, ``GlobalState``) hold numpy arrays in ``tensors``, and
``BackbonePart`` raw bytes in ``data``; the codec sends either as the body and everything else as a JSON header.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

PROTOCOL_VERSION = 6  # 2: assignments carry the task, hellos count labels as written; 3: prepare-only assignments; 4: signed envelopes, heartbeats name a round, privacy in assignments, label counts only on request; 5: receipts for updates; 6: heartbeats say training progress
PREPARED_ROUNDS = 2  # a prepare-only assignment asks the agent to cache the rows of this many rounds


def new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class DeviceProfile:
    """What a device offers for training; a live probe and a catalogue entry are the same type.

    ``gflops`` is fp32 throughput (measured by the probe, the vendor's peak in the catalogue); ``fp16_gflops``
    the dense 16-bit (tensor-core where present) peak. ``usable_memory_fraction`` is the share of the training
    memory (GPU memory, or host RAM on unified-memory and CPU-only devices) left after the OS and runtime.
    """

    name: str
    source: str  # "probe" or "catalogue"
    device_class: str
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_cores: int
    cuda_device_name: str | None = None
    cuda_total_bytes: int | None = None
    cuda_free_bytes: int | None = None
    cuda_capability: str | None = None
    is_jetson: bool = False
    jetson_model: str | None = None
    unified_memory: bool = False
    bitsandbytes_usable: bool = False
    gflops: float | None = None
    fp16_gflops: float | None = None
    memory_bandwidth_gbs: float | None = None
    usable_memory_fraction: float = 1.0
    uplink_mbps: float | None = None
    downlink_mbps: float | None = None
    source_note: str | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """The backbone package a device loads: ``sha256`` names its manifest, which names every file and chunk
    (``fedge.delivery.manifest``); ``size`` is the bytes to fetch; ``url``, when set, is where the package is served
    over HTTP(S) or ``file://`` instead of MQTT."""

    name: str
    sha256: str
    quantization: str  # nf4 | int8 | bf16 | fp16 | fp32
    size: int = 0
    url: str | None = None


@dataclass(frozen=True)
class LoraSpec:
    """A device's adapter in peft's terms: target modules, the layers it adapts (``layers_to_transform``), one rank
    per layer (``rank_pattern``, parallel to ``layers``) and one scaling s = alpha / r shared by every layer."""

    target_modules: tuple[str, ...]
    layers: tuple[int, ...]
    ranks: tuple[int, ...]
    scaling: float

    @property
    def layer_ranks(self) -> dict[int, int]:
        return dict(zip(self.layers, self.ranks))


@dataclass(frozen=True)
class TaskSpec:
    """What the run fine-tunes for, carried in every assignment so agents need no task config of their own.

    ``kind`` names a task kind: built in (``classify``, ``instruct``) or installed on both sides under the
    ``fedge.tasks`` entry point group; a config from the network names a kind, never code to import.
    ``max_tokens`` is the token budget of an example. For ``classify``: ``labels`` are the classes in index order
    (the words or strings the model is scored on), ``prompt`` the template around each example's ``{text}``.
    For ``instruct``: ``prompt`` is an optional system message; ``metric`` (``token_f1`` or ``exact_match``) scores
    greedy answers of up to ``max_new_tokens`` tokens to the first ``eval_samples`` held-out conversations.
    """

    kind: str
    labels: tuple[str, ...] = ()
    prompt: str = ""
    max_tokens: int = 48
    metric: str = ""
    eval_samples: int = 0
    max_new_tokens: int = 0


@dataclass(frozen=True)
class Hello:
    """Agent registration: who it is, what it can do, how much data it holds. ``label_counts`` counts the labels
    as its data writes them (label strings, or indices as decimal strings; the agent learns the task's label
    order only from its assignment); it is sent only when the coordinator asks (a Reject ``label_counts_wanted``:
    the strategy or grouping needs it), and a device may decline."""

    agent_id: str
    profile: DeviceProfile
    num_examples: int
    label_counts: dict[str, int] = field(default_factory=dict)
    base_version: int = 0  # the last round whose changes to the frozen weights this agent has merged
    message_id: str = field(default_factory=new_message_id)


MAX_PROXIMAL_MU = 100.0  # the largest FedProx μ an agent trains with (a larger one is refused, not clamped)
MAX_GALORE_SCALE = 16.0  # the largest GaLore scale an agent trains with


@dataclass(frozen=True)
class Assignment:
    """One round's work for one agent, with what the planner predicts it costs (checked by the agent first)."""

    run_id: str
    round: int
    agent_id: str
    backbone: BackboneSpec
    lora: LoraSpec
    task: TaskSpec
    local_steps: int
    batch_size: int
    learning_rate: float
    deadline_unix: float
    seed: int
    optimizer: str = "adamw"
    gradient_checkpointing: bool = False
    predicted_peak_bytes: int = 0
    predicted_step_seconds: float = 0.0
    strategy: str = "hetlora"  # what to train and send: fedge.strategies.recipe_for(strategy)
    run_seed: int = 0  # shared by every device of the run (e.g. FFA-LoRA's frozen A)
    prefix_cache_bytes: int = 0  # the most the frozen-prefix cache may hold (0: no bound); rows beyond it are recomputed
    prepare_only: bool = False  # the state follows later: fetch and load the backbone, cache PREPARED_ROUNDS rounds' rows, say "ready"
    clip_norm: float = 0.0  # differential privacy (fedge.privacy): clip the round's change to this L2 norm (0: off)
    noise_multiplier: float = 0.0  # ... and add N(0, (noise_multiplier * clip_norm)^2) to every value sent
    state_digest: str = ""  # the sha256 of the shared global state this round starts from ("": one addressed to this device)
    proximal_mu: float = 0.0  # FedProx: train on loss + μ/2·‖w − w₀‖² over the trainable weights w (w₀: as received); 0: off
    galore_scale: float = 0.25  # GaLore's scale on the projected update (strategy full), in (0, MAX_GALORE_SCALE]
    message_id: str = field(default_factory=new_message_id)

    def work_until(self, now: float) -> float:
        """When the work must stop for its result to reach the coordinator by the deadline: 5% of the time left, at
        least 2 s, is kept for sending."""
        return self.deadline_unix - max(2.0, 0.05 * (self.deadline_unix - now))


@dataclass(frozen=True)
class AdapterUpdate:
    run_id: str
    round: int
    agent_id: str
    num_examples: int
    metrics: dict[str, float]
    tensors: dict[str, np.ndarray]
    message_id: str = field(default_factory=new_message_id)


@dataclass(frozen=True)
class GlobalState:
    """The adapter a device starts the round from (its own rank and layers); ``final`` ends the run, and
    ``more_runs`` on a final state says another run follows (a field trial's next arm): the device stays connected
    for it. A state that devices with the same view share names no agent (``agent_id`` ""): it is sealed once on the
    shared stream and each device takes it only when its own assignment names its digest (``fedge.trust.downlink``)."""

    run_id: str
    round: int
    agent_id: str
    final: bool
    metrics: dict[str, float]
    tensors: dict[str, np.ndarray]
    more_runs: bool = False
    message_id: str = field(default_factory=new_message_id)


@dataclass(frozen=True)
class Reject:
    """Why a message was refused; ``ref`` names the refused message's id where it could be read."""

    agent_id: str
    reason: str
    detail: str
    round: int | None = None
    ref: str | None = None
    message_id: str = field(default_factory=new_message_id)


@dataclass(frozen=True)
class Receipt:
    """The coordinator took update ``ref`` of ``round`` (a ``Reject`` naming ``ref`` answers one it refused); an
    agent that gets neither sends the same update again."""

    agent_id: str
    round: int
    ref: str
    message_id: str = field(default_factory=new_message_id)


HEARTBEAT_STATES = ("idle", "preparing", "ready", "training")


@dataclass(frozen=True)
class Heartbeat:
    """The agent is alive (sent every few seconds from its own thread, whatever it is doing): ``state`` is one of
    ``HEARTBEAT_STATES``, ``round`` the wire round of the latest assignment it holds (0: none), so a coordinator
    can resend what a device missed; while training, ``step`` of ``steps`` says how far the round got (shown to the
    operator, never trusted)."""

    agent_id: str
    state: str
    sent_unix: float
    round: int = 0
    message_id: str = field(default_factory=new_message_id)
    step: int = 0
    steps: int = 0


@dataclass(frozen=True)
class Evaluation:
    """An agent's held-out accuracy of the model it holds after taking the state of round ``round`` (sent only by
    agents given evaluation data: personalised strategies have no global model to evaluate on the server)."""

    run_id: str
    round: int
    agent_id: str
    accuracy: float
    loss: float
    num_examples: int
    message_id: str = field(default_factory=new_message_id)


@dataclass(frozen=True)
class BackboneRequest:
    """An agent asks for ``count`` chunks of a backbone package from ``first`` on; ``first = -1`` asks for the
    manifest itself."""

    agent_id: str
    digest: str
    first: int
    count: int
    message_id: str = field(default_factory=new_message_id)


@dataclass(frozen=True)
class BackbonePart:
    """One piece of a backbone package: the manifest (``index = -1``) or chunk ``index``, as raw bytes; the agent
    checks it against the manifest's hash (and the manifest against the assignment's digest)."""

    digest: str
    index: int
    data: bytes
    message_id: str = field(default_factory=new_message_id)


Message = Hello | Assignment | AdapterUpdate | GlobalState | Reject | Receipt | Heartbeat | Evaluation | BackboneRequest | BackbonePart

MESSAGE_TYPES: dict[str, type] = {
    "hello": Hello,
    "assignment": Assignment,
    "update": AdapterUpdate,
    "global": GlobalState,
    "reject": Reject,
    "receipt": Receipt,
    "heartbeat": Heartbeat,
    "evaluation": Evaluation,
    "backbone_request": BackboneRequest,
    "backbone_part": BackbonePart,
}
TYPE_NAMES: dict[type, str] = {cls: name for name, cls in MESSAGE_TYPES.items()}
