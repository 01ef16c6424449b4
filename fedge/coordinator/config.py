"""The coordinator's configuration: a YAML file checked against ``config_schema.CoordinatorFile`` (types, ranges,
unknown keys), then for what needs several keys at once; every problem is reported together, each naming its key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedge.config_schema import ConfigError, known_part, load_yaml, validated
from fedge.coordinator.config_schema import RUN_LEVEL, CoordinatorFile, TaskSection
from fedge.coordinator.plans import Pin, PlannerOptions
from fedge.coordinator.robust import RobustRules
from fedge.strategies.server_optimizer import ServerOptimizer
from fedge.strategies import STRATEGIES, Strategy, StrategyError, make_strategy
from fedge.task import instruct
from fedge.task.kinds import task_problems
from fedge.task.wordnet import WORDNET_TASK
from fedge.transport import redact_url
from fedge.wire import TaskSpec

INSTRUCT_ANSWER_SHARE = 0.5  # the planner's share of answer tokens for instruct unless planner.answer_share says

__all__ = ["ConfigError", "CoordinatorConfig"]


@dataclass(frozen=True)
class CoordinatorConfig:
    """A checked coordinator config; ``CoordinatorFile`` holds each key's meaning, range and default."""

    eval_data: str
    broker: str
    enrolment: str | None
    insecure: bool
    ca_certs: str | None
    run_id: str
    run_dir: str
    backbone: str
    backbone_url: str | None
    rounds: int
    strategy: str
    strategy_options: dict
    min_clients: int
    expected_clients: int
    registration_timeout_s: float
    round_deadline_s: float
    final_eval_wait_s: float
    rejoin_grace_s: float
    local_steps: int
    batch_size: int
    learning_rate: float
    target_modules: tuple[str, ...]
    seed: int
    max_message_mb: float
    max_frame_kb: int
    threads: int
    live_address: str | None
    max_weight_share: float
    max_update_norm: float
    robust: RobustRules
    server_optimizer: ServerOptimizer
    proximal_mu: float
    privacy: dict
    sites: tuple[str, ...]
    upstream: str | None
    round_mode: str
    buffer_size: int
    max_staleness: int
    staleness_exponent: float
    aggregation_period_s: float
    task: TaskSpec
    planner: dict
    devices: dict[str, Pin]

    def pin_for(self, device_name: str, device_class: str) -> Pin | None:
        return self.devices.get(device_name) or self.devices.get(device_class)

    def planner_options(self) -> PlannerOptions:
        run_level = {key: getattr(self, key) for key in RUN_LEVEL}
        task_level = {"seq_len": self.task.max_tokens}
        if self.task.kind == "instruct" and "answer_share" not in self.planner:
            task_level["answer_share"] = INSTRUCT_ANSWER_SHARE
        return PlannerOptions(**self.planner, **run_level, **task_level, min_devices=self.min_clients)

    def make_strategy(self) -> Strategy:
        return make_strategy(self.strategy, seed=self.seed, **self.strategy_options)

    def to_dict(self) -> dict:
        """The config as its YAML would give it (lists, mappings): ``from_dict(to_dict())`` is the same config."""
        return json.loads(json.dumps(asdict(self)))

    def to_record(self) -> dict:
        """The config as a run directory keeps it: without secrets (a password in the broker URL)."""
        return {**self.to_dict(), "broker": redact_url(self.broker)}

    @classmethod
    def from_dict(cls, raw: dict) -> CoordinatorConfig:
        raw, errors = _planner_moved_up(raw)
        file, schema_errors = validated(CoordinatorFile, raw)
        if file is None:
            raise ConfigError("invalid coordinator config:\n  " + "\n  ".join(errors + schema_errors + _unchecked_problems(raw)))
        config = cls(**{
            **dict(file), "robust": RobustRules(**dict(file.robust)), "server_optimizer": ServerOptimizer(**dict(file.server_optimizer)),
            "privacy": file.privacy.model_dump(exclude_none=True) if file.privacy else {}, "task": task_spec(file.task),
            "planner": {key: tuple(value) if isinstance(value, list) else value for key, value in file.planner.model_dump(exclude_unset=True).items()},
            "devices": {name: Pin(**dict(pin)) for name, pin in file.devices.items()}, "sites": tuple(file.sites), "target_modules": tuple(file.target_modules),
            "strategy_options": dict(file.strategy_options),
        })
        errors += config.problems()
        if errors:
            raise ConfigError("invalid coordinator config:\n  " + "\n  ".join(errors))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> CoordinatorConfig:
        return cls.from_dict(load_yaml(path, "coordinator config"))

    def problems(self) -> list[str]:
        """What no single key shows: enrolment or insecure, the client counts, the strategy against its ranks and
        optimiser, round modes against groups, the task's own rules."""
        errors = access_problems(self.enrolment, self.insecure)
        if self.min_clients > self.expected_clients:
            errors.append("min_clients: cannot exceed expected_clients")
        errors += schedule_problems(self.round_mode, self.planner)
        errors += site_problems(self.strategy, bool(self.sites or self.upstream)) + privacy_problems(self.strategy, self.privacy)
        return errors + task_problems(self.task) + strategy_problems(self.strategy, self.strategy_options, self.server_optimizer, self.planner, self.devices)


def access_problems(enrolment: object, insecure: object) -> list[str]:
    """A run is enrolled (signed messages from known devices) or, said in so many words, insecure; never both."""
    if not enrolment and not insecure:
        return ["enrolment: required: the fleet directory made by `fedge enroll` (or insecure: true, on a network you trust)"]
    if enrolment and insecure:
        return ["insecure: cannot be set with enrolment"]
    return []


def schedule_problems(round_mode: object, planner: dict) -> list[str]:
    """HierFedLoRA groups keep their own schedule, so they go with synchronous rounds only."""
    if round_mode != "sync" and planner.get("groups"):
        return ["round_mode: HierFedLoRA groups keep their own schedule; use round_mode: sync with planner.groups"]
    return []


def _unchecked_problems(raw: dict) -> list[str]:
    """With some keys wrong, what the cross-key checks can still tell from the rest (the task's own rules included)."""
    planner = raw.get("planner") if isinstance(raw.get("planner"), dict) else {}
    found = access_problems(raw.get("enrolment"), raw.get("insecure")) + schedule_problems(raw.get("round_mode", "sync"), planner)
    section = known_part(TaskSection, raw.get("task", {}))
    return found + (task_problems(task_spec(section)) if section is not None else [])


def _planner_moved_up(raw: dict) -> tuple[dict, list[str]]:
    """``raw`` without the planner keys a coordinator sets elsewhere, and a problem naming where each belongs."""
    planner = raw.get("planner")
    if not isinstance(planner, dict):
        return raw, []
    errors = [f"planner.{key}: set it at the top level" for key in RUN_LEVEL if key in planner]
    if "seq_len" in planner:
        errors.append("planner.seq_len: the token budget is the task's; set task.max_tokens")
    return {**raw, "planner": {key: value for key, value in planner.items() if key not in (*RUN_LEVEL, "seq_len")}}, errors


def task_spec(section: TaskSection) -> TaskSpec:
    """The ``task:`` section as a ``TaskSpec``: unset keys of ``classify`` come from the WordNet default; ``instruct``
    defaults to a 256-token budget and token F1 on 32 held-out answers of up to 48 tokens."""
    if section.kind == "instruct":
        defaults = TaskSpec("instruct", (), "", 256, instruct.DEFAULT_METRIC, instruct.DEFAULT_EVAL_SAMPLES, instruct.DEFAULT_MAX_NEW_TOKENS)
    else:
        defaults = WORDNET_TASK if section.kind == "classify" else TaskSpec(section.kind)
    given = section.model_dump(exclude_none=True)
    if "labels" in given:
        given["labels"] = tuple(given["labels"])
    return replace(defaults, **given)


def server_optimizer_problems(optimizer: ServerOptimizer, strategy: Strategy) -> list[str]:
    """A server optimiser needs a strategy whose global state carries over from round to round."""
    if optimizer.name != "none" and not strategy.carries_state:
        return [f"server_optimizer: {strategy.name} keeps no global state from round to round to step; use none"]
    return []


def site_problems(name: str, with_sites: bool) -> list[str]:
    """A site forwards its devices' aggregate as one update: strategies that keep part of their model as base changes
    cannot be carried that way."""
    if with_sites and name in STRATEGIES and not STRATEGIES[name].forwards_through_sites:
        return [f"sites / upstream: {name} keeps part of its model as base changes, which a site's one update cannot carry; use fedit, ffa-lora, hetlora, flexlora or lora-fair"]
    return []


def privacy_problems(name: str, privacy: dict) -> list[str]:
    """Devices clip and noise what they send only where the strategy's uploads survive it."""
    if privacy and name in STRATEGIES and not STRATEGIES[name].recipe.privatisable:
        return [f"privacy: clipping and noise would break what {name}'s devices send; use a LoRA strategy for private runs"]
    return []


def strategy_problems(name: str, options: dict, optimizer: ServerOptimizer, planner: dict, devices: dict[str, Pin]) -> list[str]:
    """The strategy must take its options, carry state for a server optimiser, run groups where asked, and be able
    to combine the ranks the planner may hand out."""
    try:
        strategy = make_strategy(name, **options)
    except StrategyError as error:
        return [f"strategy_options: {error}"]
    if problems := server_optimizer_problems(optimizer, strategy):
        return problems
    if planner.get("groups") and not strategy.supports_groups:
        return [f"planner.groups: {name} cannot run HierFedLoRA groups; use fedit, ffa-lora, hetlora, flexlora or lora-fair"]
    if strategy.mixed_ranks:
        return []
    ranks = set(planner.get("ranks", PlannerOptions.ranks)) | {pin.rank for pin in devices.values()}
    if len(ranks) > 1 or planner.get("rank_profile", PlannerOptions.rank_profile) != "uniform":
        return [f"strategy: {name} averages factors of one rank, so set planner.ranks to one value, planner.rank_profile to uniform and every pinned rank to match (ranks now {sorted(ranks)}); or use hetlora, flexlora, flora, fedex-lora or lora-fair for mixed ranks"]
    return []
