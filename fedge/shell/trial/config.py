"""A field trial's YAML: which strategies, on which simulated fleet, data split, seeds and budget.

    name: default
    strategies: [fedit, ffa-lora, hetlora, {name: lora-fair, options: {solver: cosine}},
                 {name: hetlora, round_mode: async, buffer_size: 2},   # round-mode keys as in the coordinator config
                 {name: hetlora, server_optimizer: {name: fedadam, learning_rate: 0.01}, proximal_mu: 0.01, learning_rate: 0.004}]
                 # a server optimiser (fedge.strategies.server_optimizer), FedProx's μ and the devices' learning
                 # rate, per run
    fleet: [laptop-rtx3060-6gb, jetson-orin-nano-8gb, cpu-16gb, cpu-8gb]   # catalogue devices, one agent each
    slowdown: {cpu-8gb: 10}   # these devices' agents take 10× as long per training step (emulated)
    virtual_fleet: [{device: cpu-8gb, count: 600, examples: 400}, {device: jetson-orin-nano-8gb, count: 400}]
                              # also clocked, not trained: each run's round times and bytes (fedge.shell.trial.virtual)
    robust: {combiner: geometric_median}   # the coordinator's robust aggregation rules (fedge.coordinator.robust)
    insiders: {count: 1, attack: sign_flip}   # the first `count` fleet devices are compromised (fedge.shell.trial.insider)
    seeds: [0]
    rounds: 5
    data: {source: wordnet, train_per_label: 60, test_per_label: 25, alpha: 0.5, min_examples: 16}
    task: {kind: classify, ...}   # as in the coordinator config; default: the data source's own task
    planner: {max_depth: 4, ranks: [4, 8, 16]}
    same_rank: 8          # the one rank given to strategies that cannot mix ranks (FedIT)
    target_accuracy: 0.7  # in the task's headline metric (accuracy, token F1 or exact match)
    device_eval: auto     # devices report their own accuracy: auto = only where there is no global model (CE-LoRA)
    centralised: true     # also train on the pooled shards, the reference the federated curves are drawn against
    baseline: hetlora     # what every other run is compared with, seed by seed (a run's label, or centralised);
                          # default: the first strategy. List three or more seeds for intervals and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from fedge.coordinator.config import (ConfigError, parse_robust, parse_server_optimizer, parse_task, privacy_problems, proximal_mu_problems, round_mode_problems,
                                      server_optimizer_problems)
from fedge.strategies import STRATEGIES, StrategyError, make_strategy
from fedge.shell.trial.data import KINDS, TrialData, default_task
from fedge.shell.trial.insider import ATTACKS
from fedge.wire import TaskSpec
from fedge.profiles import load_catalogue_profile
from fedge.quantization.backbone import DEFAULT_BACKBONE


DEVICE_EVAL = ("auto", "all", "none")


ROUND_KEYS = ("round_mode", "buffer_size", "max_staleness", "staleness_exponent", "aggregation_period_s")


@dataclass(frozen=True)
class StrategyRun:
    name: str
    options: dict = field(default_factory=dict)
    rounds: dict = field(default_factory=dict)  # the coordinator's round-mode keys (ROUND_KEYS) for this run
    server_optimizer: dict = field(default_factory=dict)  # the coordinator's server_optimizer for this run (none: plain aggregate)
    proximal_mu: float = 0.0  # FedProx's μ on the devices for this run (0: off)
    learning_rate: float = 0.0  # the devices' learning rate for this run (0: the trial's)

    @property
    def label(self) -> str:
        mode = self.rounds.get("round_mode", "sync")
        optimizer = self.server_optimizer.get("name", "none")
        return self.name + "".join(f" {key}={value}" for key, value in sorted(self.options.items())) + (f" {mode}" if mode != "sync" else "") + "".join(
            f" {key}={value}" for key, value in sorted(self.rounds.items()) if key != "round_mode") + (f" {optimizer}" if optimizer != "none" else "") + "".join(
            f" {key}={value}" for key, value in sorted(self.server_optimizer.items()) if key != "name") + (f" fedprox μ={self.proximal_mu}" if self.proximal_mu else "") + (
            f" lr={self.learning_rate}" if self.learning_rate else "")


@dataclass(frozen=True)
class TrialConfig:
    strategies: tuple[StrategyRun, ...]
    fleet: tuple[str, ...]
    name: str = "trial"
    backbone: str = DEFAULT_BACKBONE
    seeds: tuple[int, ...] = (0,)
    rounds: int = 5
    local_steps: int = 8
    batch_size: int = 16
    learning_rate: float = 2e-3
    data: TrialData = TrialData()
    task: TaskSpec | None = None  # None: the data source's own task
    planner: dict = field(default_factory=dict)
    same_rank: int = 8
    target_accuracy: float = 0.7
    round_deadline_s: float = 900.0
    device_eval: str = "auto"  # devices evaluate their own model: auto (only without a global model), all, none
    centralised: bool = False  # also train one adapter on the pooled shards (``fedge.shell.trial.centralised``)
    privacy: dict = field(default_factory=dict)  # the coordinator's privacy settings for every run (clip_norm, noise_multiplier, delta)
    slowdown: dict = field(default_factory=dict)  # catalogue device -> how many times as long its agents take per step
    virtual_fleet: tuple[dict, ...] = ()  # [{device, count, examples}]: a larger fleet on a virtual clock (fedge.shell.trial.virtual)
    robust: dict = field(default_factory=dict)  # the coordinator's robust rules for every run (fedge.coordinator.robust)
    insiders: dict = field(default_factory=dict)  # {count, attack}: the first `count` devices are compromised
    baseline: str = ""  # the run label (or "centralised") the report compares every other run with; "": the first strategy

    @property
    def insider_count(self) -> int:
        return int(self.insiders.get("count", 0)) if self.insiders else 0

    @property
    def task_spec(self) -> TaskSpec:
        return self.task or default_task(self.data.source)

    @property
    def metric(self) -> str:
        return self.task_spec.metric or "accuracy"

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrialConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> TrialConfig:
        raw = dict(raw)
        errors = []
        data_keys = {f.name for f in fields(TrialData)}
        data_raw = raw.pop("data", {}) or {}
        errors += [f"data.{key}: unknown key" for key in sorted(set(data_raw) - data_keys)]
        data_values = {key: value for key, value in data_raw.items() if key in data_keys}
        if isinstance(data_values.get("train"), list):
            data_values["train"] = tuple(data_values["train"])
        data = TrialData(**data_values)
        errors += data.problems()
        task = None
        if "task" in raw:
            task, task_errors = parse_task(raw.pop("task"))
            errors += task_errors
            if data.source in KINDS and task.kind != KINDS[data.source]:
                errors.append(f"task.kind: the {data.source} data is for the {KINDS[data.source]} task kind")
        elif data.source == "files":
            errors.append("task: required with data.source: files (kind, and labels and prompt for classify)")
        strategies, strategy_errors = parse_strategies(raw.pop("strategies", None), raw.get("planner") or {})
        errors += strategy_errors
        fleet = tuple(raw.pop("fleet", None) or ())
        for device in fleet:
            try:
                load_catalogue_profile(device)
            except (KeyError, ValueError) as error:
                errors.append(f"fleet: {error}")
        if raw.get("device_eval", "auto") not in DEVICE_EVAL:
            errors.append(f"device_eval: one of {', '.join(DEVICE_EVAL)}")
        if len(fleet) < 2:
            errors.append("fleet: at least two catalogue devices")
        slowdown = raw.get("slowdown") or {}
        if not isinstance(slowdown, dict) or any(device not in fleet or not isinstance(factor, (int, float)) or factor < 1 for device, factor in slowdown.items()):
            errors.append("slowdown: a mapping from fleet devices to factors >= 1")
        errors += privacy_problems(raw.get("privacy") or {})
        if "robust" in raw:
            errors += parse_robust(raw["robust"])[1]
        errors += insider_problems(raw.get("insiders") or {}, len(fleet))
        for index, entry in enumerate(raw.get("virtual_fleet") or []):
            try:
                load_catalogue_profile(entry["device"])
                if int(entry.get("count", 1)) < 1 or int(entry.get("examples", 500)) < 1 or set(entry) - {"device", "count", "examples"}:
                    raise ValueError("count and examples must be positive; no other keys")
            except (KeyError, ValueError, TypeError) as error:
                errors.append(f"virtual_fleet[{index}]: {{device, count, examples}} with a catalogue device: {error}")
        errors += baseline_problems(raw.get("baseline", ""), [run.label for run in strategies], bool(raw.get("centralised")))
        errors += data.fleet_problems(len(fleet))
        known = set(cls.__dataclass_fields__) - {"strategies", "fleet"}
        errors += [f"{key}: unknown key" for key in sorted(set(raw) - known)]
        if errors:
            raise ConfigError("invalid trial config:\n  " + "\n  ".join(errors))
        values = {key: value for key, value in raw.items() if key in known - {"data", "task"}}
        if "seeds" in values:
            values["seeds"] = tuple(values["seeds"])
        if "virtual_fleet" in values:
            values["virtual_fleet"] = tuple(values["virtual_fleet"] or ())
        return cls(strategies=strategies, fleet=fleet, data=data, task=task, **values)


def parse_strategies(entries: object, planner: dict) -> tuple[tuple[StrategyRun, ...], list[str]]:
    """A trial's ``strategies`` list: each a strategy's name, or a mapping with its options, round-mode keys, server
    optimiser and FedProx μ; returns the runs and the problems found."""
    if entries is not None and not isinstance(entries, list):
        return (), ["strategies: a list of strategy names or mappings"]
    runs, errors = [], []
    for entry in entries or []:
        if not isinstance(entry, (str, dict)):
            errors.append(f"strategies: {entry!r} is neither a strategy name nor a mapping")
            continue
        if isinstance(entry, dict):
            errors += [f"strategies.{entry.get('name')}.{key}: unknown key" for key in sorted(set(entry) - {"name", "options", "server_optimizer", "proximal_mu", "learning_rate", *ROUND_KEYS})]
        run = StrategyRun(entry) if isinstance(entry, str) else StrategyRun(entry.get("name", ""), entry.get("options") or {}, {key: entry[key] for key in ROUND_KEYS if key in entry},
                                                                             entry.get("server_optimizer") or {}, entry.get("proximal_mu", 0.0), entry.get("learning_rate", 0.0))
        optimizer, optimizer_errors = parse_server_optimizer(run.server_optimizer)
        problems = proximal_mu_problems(run.proximal_mu) + round_mode_problems(run.rounds, planner) + optimizer_errors
        if not isinstance(run.learning_rate, (int, float)) or isinstance(run.learning_rate, bool) or not 0 <= run.learning_rate <= 1:
            problems.append("learning_rate: the devices' learning rate for this run, in (0, 1] (0 or unset: the trial's)")
        try:
            problems += server_optimizer_problems(optimizer, make_strategy(run.name, **run.options))
            runs.append(run)
        except StrategyError as error:
            errors.append(f"strategies: {error}")
        errors += [f"strategies.{run.name}.{problem}" for problem in problems]
    if not runs and not errors:
        errors.append(f"strategies: list at least one of {', '.join(STRATEGIES)}")
    return tuple(runs), errors


def insider_problems(insiders: dict, fleet_size: int) -> list[str]:
    if not isinstance(insiders, dict) or set(insiders) - {"count", "attack"}:
        return ["insiders: a mapping of count and attack"]
    if not insiders:
        return []
    errors = []
    if insiders.get("attack") not in ATTACKS:
        errors.append(f"insiders.attack: one of {', '.join(ATTACKS)}")
    count = insiders.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count < fleet_size / 2:
        errors.append(f"insiders.count: at least 1 and fewer than half the fleet ({fleet_size} devices)")
    return errors


def baseline_problems(baseline: object, labels: list[str], centralised: bool) -> list[str]:
    if baseline in ("", None) or baseline in labels:
        return []
    if baseline == "centralised":
        return [] if centralised else ["baseline: centralised needs centralised: true"]
    return [f"baseline: {baseline!r} is not one of this trial's runs ({', '.join(labels + ['centralised'])})"]
