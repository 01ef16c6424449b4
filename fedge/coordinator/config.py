"""Coordinator configuration from YAML; every error is collected and reported together, each naming its key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from fedge.coordinator.buffered import ROUND_MODES
from fedge.coordinator.fleet import planner_options
from fedge.coordinator.plans import Pin, PlannerOptions
from fedge.coordinator.robust import RobustRules
from fedge.strategies.server_optimizer import ServerOptimizer
from fedge.strategies import Strategy, StrategyError, make_strategy
from fedge.task import instruct
from fedge.task.kinds import task_problems
from fedge.task.wordnet import WORDNET_TASK
from fedge.transport import redact_url
from fedge.wire import MAX_PROXIMAL_MU, TaskSpec
from fedge.quantization.backbone import DEFAULT_BACKBONE, QUANTIZATIONS

_RUN_LEVEL = ("strategy", "target_modules", "batch_size", "local_steps")  # planner options set at the top level
_TASK_KEYS = {"kind", "labels", "prompt", "max_tokens", "metric", "eval_samples", "max_new_tokens"}
_TASK_INTEGERS = ("max_tokens", "eval_samples", "max_new_tokens")
INSTRUCT_ANSWER_SHARE = 0.5  # the planner's share of answer tokens for instruct unless planner.answer_share says


class ConfigError(ValueError):
    """One or more configuration keys are wrong; the message lists them all."""


@dataclass(frozen=True)
class CoordinatorConfig:
    eval_data: str
    broker: str = "mqtt://127.0.0.1:1883"
    enrolment: str | None = None  # the fleet directory of `fedge enroll`: only its devices take part, every message signed
    insecure: bool = False  # run without enrolment: any client on the broker may join and forge (trusted networks only)
    ca_certs: str | None = None  # mqtts:// with a private CA (e.g. the ca.crt of `fedge enroll --tls-host`)
    run_id: str = "run"
    run_dir: str = "runs/run"
    backbone: str = DEFAULT_BACKBONE
    backbone_url: str | None = None  # where `fedge backbone export` packages are served (http(s):// or file://); else MQTT
    rounds: int = 5
    strategy: str = "hetlora"  # an aggregation strategy of fedge.strategies.STRATEGIES
    strategy_options: dict = field(default_factory=dict)  # e.g. {solver: cosine} for lora-fair
    min_clients: int = 2
    expected_clients: int = 2
    registration_timeout_s: float = 300.0
    round_deadline_s: float = 600.0
    final_eval_wait_s: float = 0.0  # after the last round, wait this long for agents' own evaluations (0: don't)
    rejoin_grace_s: float = 30.0  # a device silent this long (no signed message, heartbeats included) stops holding up a round
    local_steps: int = 10
    batch_size: int = 16
    learning_rate: float = 2e-3
    target_modules: tuple[str, ...] = ()  # empty: the backbone family's default (q_proj, v_proj on Llama-style models)
    seed: int = 0
    max_message_mb: float = 64.0
    max_frame_kb: int = 512
    threads: int = 0  # torch threads for evaluation; 0 = torch's default
    max_weight_share: float = 0.5  # the largest share of an aggregate's weight one device's examples may carry
    max_update_norm: float = 1e4  # updates whose tensors' L2 norm exceeds this are refused (see update_norms per round)
    robust: RobustRules = RobustRules()  # norm bound, robust combiner, shrinking weight cap, quarantine: fedge.coordinator.robust
    server_optimizer: ServerOptimizer = ServerOptimizer()  # FedAvgM, FedAdam or FedYogi on each round's aggregate change: fedge.strategies.server_optimizer
    proximal_mu: float = 0.0  # FedProx on the devices: μ/2·‖w − w₀‖² added to the loss of the weights they train (0: off)
    privacy: dict = field(default_factory=dict)  # {clip_norm, noise_multiplier, delta}: DP on the devices (fedge.privacy)
    sites: tuple[str, ...] = ()  # identities of site aggregators (`fedge coordinator --role site`) among the devices
    upstream: str | None = None  # --role site: this site's credentials in the central fleet
    round_mode: str = "sync"  # sync, async (FedBuff) or semi-sync: see fedge.coordinator.buffered
    buffer_size: int = 0  # async/semi-sync: updates aggregated at once; 0 = half the planned fleet
    max_staleness: int = 4  # async/semi-sync: versions an update may lag the global state before it is refused
    staleness_exponent: float = 0.5  # async/semi-sync: an update s versions stale counts (1 + s)^-a
    aggregation_period_s: float = 60.0  # semi-sync: how often the buffer is aggregated
    task: TaskSpec = WORDNET_TASK  # what the run fine-tunes for; sent to agents in every assignment
    planner: dict = field(default_factory=dict)  # PlannerOptions besides the run-level keys above
    devices: dict[str, Pin] = field(default_factory=dict)  # optional pins by catalogue name, then device class

    def pin_for(self, device_name: str, device_class: str) -> Pin | None:
        return self.devices.get(device_name) or self.devices.get(device_class)

    def planner_options(self) -> PlannerOptions:
        run_level = {key: getattr(self, key) for key in _RUN_LEVEL}
        task_level = {"seq_len": self.task.max_tokens}
        if self.task.kind == "instruct" and "answer_share" not in self.planner:
            task_level["answer_share"] = INSTRUCT_ANSWER_SHARE
        return PlannerOptions(**self.planner, **run_level, **task_level, min_devices=self.min_clients)

    def make_strategy(self) -> Strategy:
        return make_strategy(self.strategy, seed=self.seed, **self.strategy_options)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_record(self) -> dict:
        """The config as a run directory keeps it: without secrets (a password in the broker URL)."""
        return {**self.to_dict(), "broker": redact_url(self.broker)}

    @classmethod
    def from_dict(cls, raw: dict) -> CoordinatorConfig:
        errors = []
        known = {f.name for f in fields(cls)}
        errors += [f"{key}: unknown key" for key in sorted(set(raw) - known)]
        values = {key: value for key, value in raw.items() if key in known}
        if "eval_data" not in values:
            errors.append("eval_data: required")
        devices = {}
        for name, pin in (values.pop("devices", None) or {}).items():
            try:
                devices[name] = Pin(**pin)
            except TypeError as error:
                errors.append(f"devices.{name}: {error}")
                continue
            if devices[name].rank < 1 or devices[name].depth < 1:
                errors.append(f"devices.{name}: rank and depth must be >= 1")
            if devices[name].quantization not in QUANTIZATIONS:
                errors.append(f"devices.{name}.quantization: one of {', '.join(QUANTIZATIONS)}")
        values["devices"] = devices
        if "sites" in values:
            values["sites"] = tuple(values["sites"] or ())
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        if "task" in values:
            values["task"], task_errors = parse_task(values["task"])
            errors += task_errors
        planner = values.get("planner") or {}
        errors += [f"planner.{key}: set it at the top level" for key in _RUN_LEVEL if key in planner]
        if "seq_len" in planner:
            errors.append("planner.seq_len: the token budget is the task's; set task.max_tokens")
        errors += planner_options({key: value for key, value in planner.items() if key not in _RUN_LEVEL})[1]
        values["planner"] = {key: tuple(value) if isinstance(value, list) else value for key, value in planner.items()}
        if not values.get("enrolment") and not values.get("insecure"):
            errors.append("enrolment: required: the fleet directory made by `fedge enroll` (or insecure: true, on a network you trust)")
        if values.get("enrolment") and values.get("insecure"):
            errors.append("insecure: cannot be set with enrolment")
        if not isinstance(values.get("max_frame_kb", 512), int) or values.get("max_frame_kb", 512) < 4:
            errors.append("max_frame_kb: an integer of at least 4 (a backbone chunk is a frame less 1 KiB of header)")
        if not values.get("max_message_mb", 1.0) > 0:
            errors.append("max_message_mb: must be positive")
        if not 0 < values.get("max_weight_share", 1.0) <= 1.0:
            errors.append("max_weight_share: a fraction in (0, 1]")
        if not values.get("max_update_norm", 1.0) > 0:
            errors.append("max_update_norm: must be positive")
        errors += proximal_mu_problems(values.get("proximal_mu", 0.0))
        errors += privacy_problems(values.get("privacy") or {})
        if "robust" in values:
            values["robust"], robust_errors = parse_robust(values["robust"])
            errors += robust_errors
        if "server_optimizer" in values:
            values["server_optimizer"], optimizer_errors = parse_server_optimizer(values["server_optimizer"])
            errors += optimizer_errors
        errors += round_mode_problems(values, planner)
        for key in ("rounds", "min_clients", "expected_clients", "local_steps", "batch_size"):
            if key in values and (not isinstance(values[key], int) or values[key] < 1):
                errors.append(f"{key}: must be a positive integer")
        if values.get("min_clients", 1) > values.get("expected_clients", values.get("min_clients", 1)):
            errors.append("min_clients: cannot exceed expected_clients")
        errors += _strategy_problems(values, devices)
        if errors:
            raise ConfigError("invalid coordinator config:\n  " + "\n  ".join(errors))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CoordinatorConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(raw)


def parse_task(raw) -> tuple[TaskSpec, list[str]]:
    """The ``task:`` mapping as a ``TaskSpec`` and its problems. Unset keys of ``classify`` come from the WordNet
    default; ``instruct`` defaults to a 256-token budget and token F1 on 32 held-out answers of up to 48 tokens."""
    if not isinstance(raw, dict):
        return WORDNET_TASK, ["task: expected a mapping (kind, labels, prompt, max_tokens, ...)"]
    errors = [f"task.{key}: unknown key" for key in sorted(set(raw) - _TASK_KEYS)]
    kind = raw.get("kind", "classify")
    if kind == "instruct":
        defaults = TaskSpec("instruct", (), "", 256, instruct.DEFAULT_METRIC, instruct.DEFAULT_EVAL_SAMPLES, instruct.DEFAULT_MAX_NEW_TOKENS)
    else:
        defaults = WORDNET_TASK if kind == "classify" else TaskSpec(str(kind))
    labels = raw.get("labels", defaults.labels)
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        return WORDNET_TASK, errors + ["task.labels: a list of label strings"]
    values = {key: raw.get(key, getattr(defaults, key)) for key in ("kind", "prompt", "max_tokens", "metric", "eval_samples", "max_new_tokens")}
    wrong = [key for key, value in values.items() if not isinstance(value, int if key in _TASK_INTEGERS else str) or isinstance(value, bool)]
    if wrong:
        return WORDNET_TASK, errors + [f"task.{key}: expected {'an integer' if key in _TASK_INTEGERS else 'a string'}" for key in wrong]
    spec = TaskSpec(labels=tuple(labels), **values)
    return spec, errors + task_problems(spec)


def parse_robust(raw) -> tuple[RobustRules, list[str]]:
    """The ``robust:`` mapping (keys of ``RobustRules``) and its problems."""
    return _parse_section(raw, RobustRules, "robust", strings={"combiner"}, integers={"quarantine_after"})


def parse_server_optimizer(raw) -> tuple[ServerOptimizer, list[str]]:
    """The ``server_optimizer:`` mapping (keys of ``ServerOptimizer``) and its problems."""
    return _parse_section(raw, ServerOptimizer, "server_optimizer", strings={"name"})


def proximal_mu_problems(value) -> list[str]:
    """FedProx's μ must be a number an agent will train with."""
    if not isinstance(value, (int, float)) or not 0 <= value <= MAX_PROXIMAL_MU:
        return [f"proximal_mu: FedProx's μ, from 0 (off) to {MAX_PROXIMAL_MU:g}"]
    return []


def server_optimizer_problems(optimizer: ServerOptimizer, strategy: Strategy) -> list[str]:
    """A server optimiser needs a strategy whose global state carries over from round to round."""
    if optimizer.name != "none" and not strategy.carries_state:
        return [f"server_optimizer: {strategy.name} keeps no global state from round to round to step; use none"]
    return []


def _parse_section(raw, schema: type, section: str, strings: set[str], integers: frozenset[str] | set[str] = frozenset()):
    """A mapping of ``schema``'s fields (numbers unless named in ``strings`` or ``integers``) as a ``schema``, and
    its problems (the schema's own ``problems()`` included)."""
    if isinstance(raw, schema):
        return raw, raw.problems()
    known = [f.name for f in fields(schema)]
    if not isinstance(raw, dict):
        return schema(), [f"{section}: a mapping of {', '.join(known)}"]
    errors = [f"{section}.{key}: unknown key" for key in sorted(set(raw) - set(known))]
    values = {key: value for key, value in raw.items() if key in known}
    unset = {f.name for f in fields(schema) if f.default is None}  # None there means "the default"
    for key, value in values.items():
        wanted = (str,) if key in strings else (int,) if key in integers else (int, float)
        if (not isinstance(value, wanted) or isinstance(value, bool)) and not (value is None and key in unset):
            errors.append(f"{section}.{key}: expected {'a string' if wanted == (str,) else 'a number'}")
    if errors:
        return schema(), errors
    parsed = schema(**values)
    return parsed, parsed.problems()


_PRIVACY_KEYS = {"clip_norm", "noise_multiplier", "delta"}


def privacy_problems(privacy: dict) -> list[str]:
    if not isinstance(privacy, dict):
        return ["privacy: a mapping of clip_norm, noise_multiplier and delta"]
    errors = [f"privacy.{key}: unknown key" for key in sorted(set(privacy) - _PRIVACY_KEYS)]
    if not privacy:
        return errors

    def number(key: str) -> bool:
        return isinstance(privacy.get(key), (int, float)) and not isinstance(privacy.get(key), bool)

    if not number("clip_norm") or privacy["clip_norm"] <= 0:
        errors.append("privacy.clip_norm: a positive L2 norm (required when privacy is set)")
    if not number("noise_multiplier") or privacy["noise_multiplier"] < 0:
        errors.append("privacy.noise_multiplier: zero or more (noise std = noise_multiplier x clip_norm)")
    if "delta" in privacy and (not number("delta") or not 0 < privacy["delta"] < 1):
        errors.append("privacy.delta: a probability in (0, 1), e.g. 1e-5")
    return errors


def round_mode_problems(values: dict, planner: dict) -> list[str]:
    mode = values.get("round_mode", "sync")
    if mode not in ROUND_MODES:
        return [f"round_mode: one of {', '.join(ROUND_MODES)}"]
    found = []
    if mode != "sync" and planner.get("groups"):
        found.append("round_mode: HierFedLoRA groups keep their own schedule; use round_mode: sync with planner.groups")
    if not isinstance(values.get("buffer_size", 0), int) or values.get("buffer_size", 0) < 0:
        found.append("buffer_size: an integer >= 0 (0: half the planned fleet)")
    if not isinstance(values.get("max_staleness", 0), int) or values.get("max_staleness", 0) < 0:
        found.append("max_staleness: an integer >= 0")
    if not values.get("staleness_exponent", 0.5) >= 0:
        found.append("staleness_exponent: must be >= 0")
    if not values.get("aggregation_period_s", 1.0) > 0:
        found.append("aggregation_period_s: must be positive")
    return found


def _strategy_problems(values: dict, devices: dict[str, Pin]) -> list[str]:
    """The strategy must exist, take its options, and be able to combine the ranks the planner may hand out."""
    name = values.get("strategy", CoordinatorConfig.strategy)
    try:
        strategy = make_strategy(name, **(values.get("strategy_options") or {}))
    except StrategyError as error:
        return [f"strategy: {error}"]
    planner = values.get("planner") or {}
    optimizer = values.get("server_optimizer")
    if isinstance(optimizer, ServerOptimizer) and (problems := server_optimizer_problems(optimizer, strategy)):
        return problems
    if planner.get("groups") and not strategy.supports_groups:
        return [f"planner.groups: {name} cannot run HierFedLoRA groups; use fedit, ffa-lora, hetlora, flexlora, lora-fair or full"]
    if strategy.mixed_ranks:
        return []
    ranks = set(planner.get("ranks", PlannerOptions.ranks)) | {pin.rank for pin in devices.values()}
    if len(ranks) > 1 or planner.get("rank_profile", PlannerOptions.rank_profile) != "uniform":
        return [f"strategy: {name} averages factors of one rank, so set planner.ranks to one value, planner.rank_profile to uniform and every pinned rank to match (ranks now {sorted(ranks)}); or use hetlora, flexlora, flora, fedex-lora or lora-fair for mixed ranks"]
    return []
