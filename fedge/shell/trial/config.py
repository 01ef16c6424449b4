"""A field trial's YAML: which strategies, on which simulated fleet, data split, seeds and budget.

    name: default
    strategies: [fedit, ffa-lora, hetlora, {name: lora-fair, options: {solver: cosine}},
                 {name: hetlora, round_mode: async, buffer_size: 2},   # round-mode keys as in the coordinator config
                 {name: hetlora, server_optimizer: {name: fedadam, learning_rate: 0.01}, proximal_mu: 0.01, learning_rate: 0.004},
                 {name: hetlora, groups: 2}]
                 # a server optimiser (fedge.strategies.server_optimizer), FedProx's μ, the devices' learning
                 # rate and HierFedLoRA groups (the planner's `groups`), per run
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

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from fedge.config_schema import ConfigError, Section, known_part, load_yaml, validated
from fedge.coordinator.config import privacy_problems, schedule_problems, server_optimizer_problems, task_spec
from fedge.coordinator.config_schema import (OffWhenEmpty, PlannerSection, Positive, PrivacySection, ProximalMu, RobustSection, RoundModeFields, ServerOptimizerSection, StrategyName,
                                             TaskSection)
from fedge.strategies import StrategyError, make_strategy
from fedge.strategies.server_optimizer import ServerOptimizer
from fedge.task.kinds import task_problems
from fedge.shell.trial.data import KINDS, SOURCES, TrialData, default_task
from fedge.wire import TaskSpec
from fedge.profiles import load_catalogue_profile
from fedge.quantization.backbone import DEFAULT_BACKBONE


DEVICE_EVAL = ("auto", "all", "none")
ATTACKS = ("sign_flip", "scale", "constant", "bias")  # what a compromised device does to its update (fedge.shell.trial.insider)
ROUND_KEYS = tuple(RoundModeFields.model_fields)


@dataclass(frozen=True)
class StrategyRun:
    name: str
    options: dict = field(default_factory=dict)
    rounds: dict = field(default_factory=dict)  # the coordinator's round-mode keys (ROUND_KEYS) for this run
    server_optimizer: dict = field(default_factory=dict)  # the coordinator's server_optimizer for this run (none: plain aggregate)
    proximal_mu: float = 0.0  # FedProx's μ on the devices for this run (0: off)
    learning_rate: float = 0.0  # the devices' learning rate for this run (0: the trial's)
    groups: int | None = None  # HierFedLoRA groups for this run (None: the trial planner's)

    def planner(self, planner: dict) -> dict:
        """The trial's (or coordinator's) planner settings with this run's groups."""
        return planner if self.groups is None else {**planner, "groups": self.groups}

    @property
    def label(self) -> str:
        mode = self.rounds.get("round_mode", "sync")
        optimizer = self.server_optimizer.get("name", "none")
        return self.name + "".join(f" {key}={value}" for key, value in sorted(self.options.items())) + (f" {mode}" if mode != "sync" else "") + "".join(
            f" {key}={value}" for key, value in sorted(self.rounds.items()) if key != "round_mode") + (f" {optimizer}" if optimizer != "none" else "") + "".join(
            f" {key}={value}" for key, value in sorted(self.server_optimizer.items()) if key != "name") + (f" fedprox μ={self.proximal_mu}" if self.proximal_mu else "") + (
            f" lr={self.learning_rate}" if self.learning_rate else "") + (f" groups={self.groups}" if self.groups is not None else "")


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
        return cls.from_dict(load_yaml(path, "trial config"))

    @classmethod
    def from_dict(cls, raw: dict) -> TrialConfig:
        file, errors = validated(TrialFile, raw)
        if file is None:
            raise ConfigError("invalid trial config:\n  " + "\n  ".join(errors + _unchecked_problems(raw)))
        trial = cls(
            strategies=strategy_runs(file.strategies), fleet=tuple(file.fleet), name=file.name, backbone=file.backbone, seeds=tuple(file.seeds), rounds=file.rounds,
            local_steps=file.local_steps, batch_size=file.batch_size, learning_rate=file.learning_rate, data=trial_data(file.data), task=task_spec(file.task) if file.task else None,
            planner=file.planner.model_dump(exclude_unset=True), same_rank=file.same_rank, target_accuracy=file.target_accuracy, round_deadline_s=file.round_deadline_s,
            device_eval=file.device_eval, centralised=file.centralised, privacy=file.privacy.model_dump(exclude_none=True) if file.privacy else {}, slowdown=dict(file.slowdown),
            virtual_fleet=tuple(entry.model_dump() for entry in file.virtual_fleet), robust=file.robust.model_dump(exclude_unset=True) if file.robust else {},
            insiders=file.insiders.model_dump() if file.insiders else {}, baseline=file.baseline,
        )
        errors = trial.problems()
        if errors:
            raise ConfigError("invalid trial config:\n  " + "\n  ".join(errors))
        return trial

    def problems(self) -> list[str]:
        """What no single key shows: catalogue devices, the task against the data, strategies against their options,
        the baseline among the runs, insiders and training files against the fleet."""
        errors = [f"fleet: {error}" for error in _catalogue_problems(self.fleet)]
        errors += [f"virtual_fleet: {error}" for error in _catalogue_problems(entry["device"] for entry in self.virtual_fleet)]
        errors += self.data.fleet_problems(len(self.fleet)) + _data_problems(self.data, self.task)
        errors += [f"slowdown.{device}: not a fleet device" for device in self.slowdown if device not in self.fleet]
        if self.insider_count and not self.insider_count < len(self.fleet) / 2:
            errors.append(f"insiders.count: fewer than half the fleet ({len(self.fleet)} devices)")
        errors += run_problems(enumerate(self.strategies), self.planner, self.privacy)
        return errors + baseline_problems(self.baseline, [run.label for run in self.strategies], self.centralised)


def _data_problems(data: TrialData, task: TaskSpec | None) -> list[str]:
    """The data against the task: a source's own kind, a task for the operator's files, the task's own rules."""
    errors = data.problems()
    if task is None and data.source == "files":
        errors.append("task: required with data.source: files (kind, and labels and prompt for classify)")
    if task is not None and data.source in KINDS and task.kind != KINDS[data.source]:
        errors.append(f"task.kind: the {data.source} data is for the {KINDS[data.source]} task kind")
    return errors + (task_problems(task) if task is not None else [])


def _unchecked_problems(raw: dict) -> list[str]:
    """With some keys wrong, what the cross-key checks can still tell from the parts that are right."""
    fleet = raw.get("fleet")
    errors = [f"fleet: {error}" for error in _catalogue_problems(fleet)] if isinstance(fleet, list) and all(isinstance(device, str) for device in fleet) else []
    data = known_part(DataSection, raw.get("data") or {})
    task = known_part(TaskSection, raw["task"]) if "task" in raw else None
    if data is not None and (task is not None or "task" not in raw):
        errors += _data_problems(trial_data(data), task_spec(task) if task else None)
    entries = raw.get("strategies") if isinstance(raw.get("strategies"), list) else []
    checked = [(index, validated(StrategyEntry, _named(entry))[0]) for index, entry in enumerate(entries)]
    planner = raw.get("planner") if isinstance(raw.get("planner"), dict) else {}
    privacy = raw.get("privacy") if isinstance(raw.get("privacy"), dict) else {}
    return errors + run_problems([(index, strategy_runs([entry])[0]) for index, entry in checked if entry is not None], planner, privacy)


def _catalogue_problems(devices) -> list[str]:
    found = []
    for device in devices:
        try:
            load_catalogue_profile(device)
        except (KeyError, ValueError) as error:
            found.append(str(error.args[0]))
    return found


def strategy_runs(entries: list[StrategyEntry]) -> tuple[StrategyRun, ...]:
    """The runs of a checked ``strategies`` list."""
    return tuple(StrategyRun(entry.name, dict(entry.options), {key: getattr(entry, key) for key in ROUND_KEYS if key in entry.model_fields_set},
                             entry.server_optimizer.model_dump(exclude_unset=True), entry.proximal_mu, entry.learning_rate, entry.groups) for entry in entries)


def run_problems(runs: Iterable[tuple[int, StrategyRun]], planner: dict, privacy: dict) -> list[str]:
    """Each run's (by its place in ``strategies``) strategy must take its options, carry state for its server
    optimiser and survive the run's privacy; groups keep sync rounds."""
    errors = []
    for index, run in runs:
        try:
            strategy = make_strategy(run.name, **run.options)
        except StrategyError as error:
            errors.append(f"strategies[{index}].options: {error}")
            continue
        errors += [f"strategies[{index}].{problem}" for problem in server_optimizer_problems(ServerOptimizer(**run.server_optimizer), strategy)]
        errors += [f"strategies[{index}].{problem}" for problem in schedule_problems(run.rounds.get("round_mode", "sync"), run.planner(planner)) + privacy_problems(run.name, privacy)]
    return errors


def trial_data(section: DataSection) -> TrialData:
    values = section.model_dump()
    return TrialData(**{**values, "train": tuple(values["train"]) if isinstance(values["train"], list) else values["train"]})


def baseline_problems(baseline: str, labels: list[str], centralised: bool) -> list[str]:
    if baseline in ("", None) or baseline in labels:
        return []
    if baseline == "centralised":
        return [] if centralised else ["baseline: centralised needs centralised: true"]
    return [f"baseline: {baseline!r} is not one of this trial's runs ({', '.join(labels + ['centralised'])})"]


def _named(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class StrategyEntry(RoundModeFields):
    """One run of a trial: a strategy with its options, round mode, server optimiser, FedProx μ, learning rate and groups."""

    name: StrategyName = Field(description="the aggregation strategy")
    options: dict[str, str | int | float | bool] = Field(default_factory=dict, description="the strategy's own options")
    server_optimizer: ServerOptimizerSection = Field(default_factory=ServerOptimizerSection, description="a server optimiser for this run; unset: none")
    proximal_mu: ProximalMu = 0.0
    learning_rate: float = Field(0.0, ge=0, le=1, description="the devices' learning rate for this run; 0: the trial's")
    groups: int | None = Field(None, ge=0, description="HierFedLoRA groups for this run (the planner's groups; 0: none); unset: the planner section's")


StrategyItem = Annotated[StrategyEntry, BeforeValidator(_named, json_schema_input_type=StrategyName | StrategyEntry)]
_data = TrialData()


class DataSection(Section):
    """Where a trial's examples come from and how they are dealt (``fedge.shell.trial.data``)."""

    source: Literal[SOURCES] = Field(_data.source, description="wordnet, fortunes, chatterbot, or files (your own)")
    train_per_label: Positive = Field(_data.train_per_label, description="wordnet, fortunes: training examples per label")
    test_per_label: Positive = Field(_data.test_per_label, description="wordnet, fortunes: held-out examples per label")
    alpha: float = Field(_data.alpha, gt=0, description="the Dirichlet concentration of each device's label mix; smaller is more skewed")
    min_examples: Positive = Field(_data.min_examples, description="the fewest examples a device is dealt")
    test_fraction: float = Field(_data.test_fraction, gt=0, lt=1, description="chatterbot: the share of every topic held out")
    train: str | list[Annotated[str, Field(min_length=1)]] = Field(_data.train, description="files: JSON lines to deal to the devices, or a list with one file per fleet device")
    test: str = Field(_data.test, description="files: held-out JSON lines")


class VirtualDevice(Section):
    """Devices clocked, not trained: each run's round times and bytes at scale (``fedge.shell.trial.virtual``)."""

    device: str = Field(description="a catalogue device")
    count: Positive = 1
    examples: Positive = 500


class InsidersSection(Section):
    """The first ``count`` fleet devices are compromised (``fedge.shell.trial.insider``)."""

    count: Positive = 1
    attack: Literal[ATTACKS]


class TrialFile(Section):
    """A trial (``fedge trial FILE``): strategies compared on one simulated fleet."""

    strategies: Annotated[list[StrategyItem], Field(min_length=1)] = Field(description="the runs: strategy names, or mappings with options")
    fleet: Annotated[list[str], Field(min_length=2)] = Field(description="catalogue devices, one agent each")
    name: str = Field(TrialConfig.name, min_length=1, description="the trial's name (its default output directory is runs/trial-NAME)")
    backbone: str = Field(TrialConfig.backbone, description="a bundled backbone's name or a checkpoint directory")
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(list(TrialConfig.seeds), description="every run is repeated once per seed; three or more give intervals and tests")
    rounds: Positive = Field(TrialConfig.rounds, description="federated rounds per run")
    local_steps: Positive = Field(TrialConfig.local_steps, description="the planner's starting local steps per round")
    batch_size: Positive = Field(TrialConfig.batch_size, description="examples per training step")
    learning_rate: float = Field(TrialConfig.learning_rate, gt=0, le=1, description="the devices' learning rate")
    data: DataSection = Field(default_factory=DataSection)
    task: TaskSection | None = Field(None, description="as in the coordinator config; unset: the data source's own task")
    planner: PlannerSection = Field(default_factory=PlannerSection)
    same_rank: Positive = Field(TrialConfig.same_rank, description="the one rank given to strategies that cannot mix ranks (FedIT)")
    target_accuracy: float = Field(TrialConfig.target_accuracy, ge=0, le=1, description="the score the report counts rounds and bytes to, in the task's headline metric")
    round_deadline_s: float = Field(TrialConfig.round_deadline_s, gt=0, description="seconds a round waits for planned devices' updates")
    device_eval: Literal[DEVICE_EVAL] = Field(TrialConfig.device_eval, description="devices report their own score: auto (only without a global model, CE-LoRA), all, none")
    centralised: bool = Field(TrialConfig.centralised, description="also train on the pooled shards: the reference the federated curves are drawn against")
    privacy: OffWhenEmpty[PrivacySection] = Field(None, description="differential privacy on the devices, for every run")
    slowdown: dict[str, Annotated[float, Field(ge=1)]] = Field(default_factory=dict, description="fleet device -> how many times as long its agents take per step")
    virtual_fleet: list[VirtualDevice] = Field(default_factory=list, description="a larger fleet on a virtual clock")
    robust: OffWhenEmpty[RobustSection] = Field(None, description="the coordinator's robust rules for every run")
    insiders: OffWhenEmpty[InsidersSection] = Field(None, description="compromised devices among the fleet")
    baseline: str = Field(TrialConfig.baseline, description="the run label (or centralised) every other run is compared with; unset: the first strategy")
