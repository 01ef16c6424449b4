"""The coordinator config's schema: every key typed, ranged and explained (the reference in the docs is written from it).

Defaults come from the dataclasses the run uses (``CoordinatorConfig``, ``PlannerOptions``, ``RobustRules``,
``ServerOptimizer``); what needs several keys at once (a strategy and its ranks, enrolment or insecure) is checked
by ``CoordinatorConfig.from_dict`` after this.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BeforeValidator, Field

from fedge.config_schema import Section
from fedge.coordinator.buffered import ROUND_MODES
from fedge.coordinator.plans import RANK_PROFILES, PlannerOptions
from fedge.coordinator.robust import COMBINERS, RobustRules
from fedge.profiles.memory import OPTIMIZER_STATE_BYTES
from fedge.profiles.timing import WIRE_STRATEGIES
from fedge.quantization.backbone import DEFAULT_BACKBONE, QUANTIZATIONS
from fedge.strategies import STRATEGIES
from fedge.strategies.server_optimizer import SERVER_OPTIMIZERS, ServerOptimizer
from fedge.wire import MAX_PROXIMAL_MU

Positive = Annotated[int, Field(ge=1)]
StrategyName = Literal[tuple(STRATEGIES)]
RUN_LEVEL = ("strategy", "target_modules", "batch_size", "local_steps")  # planner options the coordinator sets at the top level

_planner = PlannerOptions()
_robust = RobustRules()
_optimizer = ServerOptimizer()


class TaskSection(Section):
    """What the run fine-tunes for; unset keys take the kind's defaults (classify: the WordNet task)."""

    kind: str = Field("classify", description="classify, instruct, or a kind installed under the fedge.tasks entry points")
    labels: list[str] | None = Field(None, description="classify: the classes in index order, the words the model is scored on")
    prompt: str | None = Field(None, description="classify: the template around each example's {text}; instruct: an optional system message")
    max_tokens: Positive | None = Field(None, description="the token budget of one example")
    metric: str | None = Field(None, description="instruct: token_f1 or exact_match")
    eval_samples: int | None = Field(None, ge=0, description="instruct: held-out conversations answered greedily at each evaluation (0 for classify)")
    max_new_tokens: int | None = Field(None, ge=0, description="instruct: the longest answer generated at evaluation (0 for classify)")


class PlannerSection(Section):
    """The capacity planner's options (``fedge.coordinator.plans.PlannerOptions``)."""

    ranks: Annotated[list[Positive], Field(min_length=1)] = Field(list(_planner.ranks), description="the LoRA ranks the planner may give a device")
    max_depth: int = Field(_planner.max_depth, ge=0, description="the most layers (from the output) a device fine-tunes; 0: every layer")
    optimizer: Literal[tuple(OPTIMIZER_STATE_BYTES)] = Field(_planner.optimizer, description="the device optimizer the memory model costs")
    scaling: float = Field(_planner.scaling, gt=0, description="LoRA's alpha / rank")
    safety_margin: float = Field(_planner.safety_margin, gt=0, le=1, description="the share of a device's free memory a plan may use")
    straggler_bound: float = Field(_planner.straggler_bound, ge=1, description="a device slower than this multiple of the round's target is cut back or left out")
    rank_profile: Literal[RANK_PROFILES] = Field(_planner.rank_profile, description="legend: r, r/2, r/4 by thirds, highest nearest the output; uniform: r everywhere")
    groups: int = Field(_planner.groups, ge=0, description="HierFedLoRA: near-IID groups of devices with their own schedule; 0: none")
    max_group_frequency: Positive = Field(_planner.max_group_frequency, description="HierFedLoRA: the most group rounds per global round")
    prefix_cache_mib: Positive = Field(_planner.prefix_cache_mib, description="the most a device's frozen-prefix cache may hold; the rest is recomputed")
    answer_share: float = Field(_planner.answer_share, ge=0, le=1, description="the share of tokens the full-vocabulary loss runs on (instruct: 0.5 unless set)")
    sequences_per_example: Positive = Field(_planner.sequences_per_example, description="classify with labels of several tokens: one sequence per label")


class FleetPlannerSection(PlannerSection):
    """``fedge plan``'s planner options: the coordinator's, with those a coordinator sets at its top level."""

    strategy: Literal[WIRE_STRATEGIES] = Field(_planner.strategy, description="the aggregation strategy whose traffic and memory are costed")
    target_modules: list[str] = Field(list(_planner.target_modules), description="the modules LoRA adapts; empty: the model family's default")
    seq_len: Positive = Field(_planner.seq_len, description="the token budget of one example")
    batch_size: Positive = Field(_planner.batch_size, description="examples per training step")
    local_steps: Positive = Field(_planner.local_steps, description="the starting local steps per round")


class PinSection(Section):
    """An operator's fixed choice for a device: uniform rank on the top ``depth`` layers of a ``quantization`` base."""

    rank: Positive
    depth: Positive
    quantization: Literal[QUANTIZATIONS] = "fp32"


class RobustSection(Section):
    """Robust aggregation (``fedge.coordinator.robust``): norm bound, combiner, shrinking weight cap, quarantine."""

    combiner: Literal[COMBINERS] = Field(_robust.combiner, description="how the updates' movements are combined, coordinate by coordinate or as a whole")
    norm_multiple: float = Field(_robust.norm_multiple, ge=0, description="movements with an RMS over this multiple of the round's median are scaled down to it; 0: off")
    trim_fraction: float = Field(_robust.trim_fraction, gt=0, lt=0.5, description="β: the winsorized mean clamps max(1, ⌊β·n⌋) values at each end of every coordinate")
    share_factor: float = Field(_robust.share_factor, ge=1, description="no device carries more than share_factor / n of the weight")
    outlier_factor: float = Field(_robust.outlier_factor, gt=1, description="agreement under the median divided by this lowers a device's weight")
    trust_memory: float = Field(_robust.trust_memory, ge=0, lt=1, description="λ: how slowly a device that disagreed regains its weight; 0: each round judged alone")
    quarantine_after: int = Field(_robust.quarantine_after, ge=0, description="outlier rounds in a row before a device gets no more work; 0: never")


class ServerOptimizerSection(Section):
    """A server optimiser on each round's aggregate change (``fedge.strategies.server_optimizer``)."""

    name: Literal[SERVER_OPTIMIZERS] = Field(_optimizer.name, description="none (the plain aggregate), fedavgm, fedadam or fedyogi")
    learning_rate: float | None = Field(None, gt=0, description="η; unset: the rule's default")
    beta1: float | None = Field(None, ge=0, lt=1, description="β₁: momentum (fedavgm) or the first moment's decay; unset: the rule's default")
    beta2: float = Field(_optimizer.beta2, ge=0, lt=1, description="β₂: the second moment's decay (fedadam, fedyogi)")
    tau: float = Field(_optimizer.tau, gt=0, description="τ: adaptivity; a larger τ steps more like SGD with momentum")


class PrivacySection(Section):
    """Differential privacy on the devices (``fedge.privacy``): clipped, noised updates."""

    clip_norm: float = Field(gt=0, description="each update's L2 norm is clipped to this")
    noise_multiplier: float = Field(ge=0, description="Gaussian noise of standard deviation noise_multiplier × clip_norm")
    delta: float | None = Field(None, gt=0, lt=1, description="δ of the (ε, δ) the run reports, e.g. 1e-5")


class RoundModeFields(Section):
    """How rounds close: all planned devices (sync), a buffer of updates (async, FedBuff), or a period (semi-sync)."""

    round_mode: Literal[ROUND_MODES] = Field("sync", description="sync, async (FedBuff) or semi-sync: see fedge.coordinator.buffered")
    buffer_size: int = Field(0, ge=0, description="async/semi-sync: updates aggregated at once; 0: half the planned fleet")
    max_staleness: int = Field(4, ge=0, description="async/semi-sync: versions an update may lag the global state before it is refused")
    staleness_exponent: float = Field(0.5, ge=0, description="async/semi-sync: an update s versions stale counts (1 + s)^-a")
    aggregation_period_s: float = Field(60.0, gt=0, description="semi-sync: how often the buffer is aggregated, in seconds")


SectionT = TypeVar("SectionT")
OffWhenEmpty = Annotated[SectionT | None, BeforeValidator(lambda value: None if value == {} else value)]  # an empty mapping: the section is off
SectionT = TypeVar("SectionT")
OffWhenEmpty = Annotated[SectionT | None, BeforeValidator(lambda value: None if value == {} else value)]  # an empty mapping: the section is off
ProximalMu = Annotated[float, Field(ge=0, le=MAX_PROXIMAL_MU, description="FedProx on the devices: μ/2·‖w − w₀‖² added to the loss of the weights they train; 0: off")]


class CoordinatorFile(RoundModeFields):
    """A coordinator config (``fedge coordinator --config FILE``)."""

    eval_data: str = Field(description="held-out JSON lines in the task's format, evaluated after every round")
    broker: str = Field("mqtt://127.0.0.1:1883", description="mqtt://[user@]host:port or mqtts://…; the password comes from FEDGE_MQTT_PASSWORD")
    enrolment: str | None = Field(None, description="the fleet directory of `fedge enroll`: only its devices take part, every message signed")
    insecure: bool = Field(False, description="run without enrolment: any client on the broker may join and forge (trusted networks only)")
    ca_certs: str | None = Field(None, description="mqtts:// with a private CA (the ca.crt of `fedge enroll --tls-host`)")
    run_id: str = Field("run", min_length=1, max_length=128, description="the run's name, sealed into every message")
    run_dir: str = Field("runs/run", description="where the run's state, records and results are kept")
    backbone: str = Field(DEFAULT_BACKBONE, description="a bundled backbone's name or a checkpoint directory")
    backbone_url: str | None = Field(None, description="where `fedge backbone` packages are served (http(s):// or file://); unset: over MQTT")
    rounds: Positive = Field(5, description="federated rounds")
    strategy: StrategyName = Field("hetlora", description="the aggregation strategy")
    strategy_options: dict[str, str | int | float | bool] = Field(default_factory=dict, description="the strategy's own options, e.g. {solver: cosine} for lora-fair")
    min_clients: Positive = Field(2, description="the fewest devices a round needs")
    expected_clients: Positive = Field(2, description="devices the run waits for at registration")
    registration_timeout_s: float = Field(300.0, gt=0, description="seconds to wait for expected_clients before starting with min_clients")
    round_deadline_s: float = Field(600.0, gt=0, description="seconds a round waits for planned devices' updates")
    final_eval_wait_s: float = Field(0.0, ge=0, description="after the last round, wait this long for agents' own evaluations; 0: don't")
    rejoin_grace_s: float = Field(30.0, gt=0, description="a device silent this long (heartbeats included) stops holding up a round")
    local_steps: Positive = Field(10, description="the planner's starting local steps per round")
    batch_size: Positive = Field(16, description="examples per training step")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="the devices' learning rate")
    target_modules: list[str] = Field(default_factory=list, description="the modules LoRA adapts; empty: the backbone family's default (q_proj, v_proj on Llama-style models)")
    seed: int = Field(0, ge=0, description="seed of the planner's ties, the strategy and training")
    max_message_mb: float = Field(64.0, gt=0, description="the largest message accepted from one device")
    max_frame_kb: int = Field(512, ge=4, description="the largest MQTT frame sent; a backbone chunk is a frame less 1 KiB of header")
    threads: int = Field(0, ge=0, description="torch threads for evaluation; 0: torch's default")
    live_address: str | None = Field("127.0.0.1:0", pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):\d{1,5}$",
                                     description="host:port of the read-only live fleet page and Prometheus /metrics (port 0: any free port, written to RUN_DIR/live.json); unset: none")
    max_weight_share: float = Field(0.5, gt=0, le=1, description="the largest share of an aggregate's weight one device's examples may carry")
    max_update_norm: float = Field(1e4, gt=0, description="updates whose tensors' L2 norm exceeds this are refused")
    robust: RobustSection = Field(default_factory=RobustSection, description="robust aggregation rules")
    server_optimizer: ServerOptimizerSection = Field(default_factory=ServerOptimizerSection, description="a server optimiser on each round's aggregate change")
    proximal_mu: ProximalMu = 0.0
    privacy: OffWhenEmpty[PrivacySection] = Field(None, description="differential privacy on the devices; unset or {}: off")
    sites: list[str] = Field(default_factory=list, description="identities of site aggregators (`fedge coordinator --role site`) among the devices")
    upstream: str | None = Field(None, description="--role site: this site's credentials file in the central fleet")
    task: TaskSection = Field(default_factory=TaskSection, description="what the run fine-tunes for, sent to agents in every assignment")
    planner: PlannerSection = Field(default_factory=PlannerSection, description="the capacity planner's options")
    devices: dict[str, PinSection] = Field(default_factory=dict, description="pins by catalogue name, then device class")
