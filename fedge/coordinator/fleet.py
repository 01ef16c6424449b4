"""Fleet files for ``fedge plan`` and planner options from YAML, with every error collected and named.

    model: smollm2-135m-instruct          # optional; --model overrides it
    planner: {strategy: fedit, max_depth: 8, ranks: [4, 8, 16], groups: 2}
    devices:
      - {device: jetson-orin-nano-8gb, count: 2, examples: 400, labels: [50, 50, ...]}
      - {profile: laptop.json, examples: 900}   # written by `fedge profile --json`
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from fedge.config_schema import ConfigError, Section, load_yaml, validated
from fedge.coordinator.config_schema import FleetPlannerSection, Positive
from fedge.coordinator.plans import FleetMember, PlannerOptions
from fedge.wire import DeviceProfile, SchemaError
from fedge.wire.schema import from_json
from fedge.profiles.catalogue import load_catalogue_profile


class FleetError(ConfigError):
    """The fleet file or planner options are wrong; the message lists every problem."""


@dataclass(frozen=True)
class Fleet:
    model: str | None
    options: PlannerOptions
    members: list[FleetMember]


class FleetDevice(Section):
    """One kind of device in the fleet: a catalogue entry or a measured profile, ``count`` times."""

    device: str | None = Field(None, description="a catalogue device (`fedge profile --device NAME` shows one)")
    profile: str | None = Field(None, description="a profile written by `fedge profile --json`, relative to the fleet file")
    id: str | None = Field(None, min_length=1, description="the device's id; with count > 1, ID-1, ID-2, ... (default: the profile's name)")
    count: Positive = Field(1, description="how many such devices")
    examples: Positive = Field(500, description="training examples each holds")
    labels: list[int] = Field(default_factory=list, description="examples per label each holds (HierFedLoRA groups by them)")


class FleetFile(Section):
    """A fleet to plan (``fedge plan FILE``)."""

    model: str | None = Field(None, description="checkpoint directory, config.json or bundled architecture; --model overrides it")
    planner: FleetPlannerSection = Field(default_factory=FleetPlannerSection)
    devices: list[FleetDevice] = Field(min_length=1, description="the fleet's devices")


def planner_options(section: FleetPlannerSection) -> tuple[PlannerOptions, list[str]]:
    """The planner's options from a checked section, and what its own rules find wrong (each naming its key)."""
    options = PlannerOptions(**{key: tuple(value) if isinstance(value, list) else value for key, value in dict(section).items()})
    return options, [f"planner.{problem}" for problem in options.problems()]


def _profile(entry: FleetDevice, base: Path) -> DeviceProfile:
    if entry.device is not None:
        return load_catalogue_profile(entry.device)
    raw = json.loads((base / entry.profile).read_text())
    return from_json(DeviceProfile, raw, "profile")


def load_fleet(path: str | Path) -> Fleet:
    """The fleet file at ``path``; ``FleetError`` lists every problem: the schema's, then each valid entry's own."""
    path = Path(path)
    raw = load_yaml(path, "fleet file")
    fleet, errors = validated(FleetFile, raw)
    planner = fleet.planner if fleet else validated(FleetPlannerSection, raw.get("planner") or {})[0]
    options, option_errors = planner_options(planner) if planner is not None else (PlannerOptions(), [])
    members, member_errors = _members(raw.get("devices") if isinstance(raw.get("devices"), list) else [], path.parent)
    errors += option_errors + member_errors
    if errors:
        raise FleetError(f"invalid fleet file {path}:\n  " + "\n  ".join(errors))
    return Fleet(fleet.model, options, members)


def _members(entries: list, base: Path) -> tuple[list[FleetMember], list[str]]:
    """The members the valid entries describe, and what is wrong with them (unknown devices, unreadable profiles,
    duplicate ids)."""
    members: list[FleetMember] = []
    errors = []
    for index, raw_entry in enumerate(entries):
        entry, where = validated(FleetDevice, raw_entry)[0], f"devices[{index}]"
        if entry is None:
            continue
        if (entry.device is None) == (entry.profile is None):
            errors.append(f"{where}: give exactly one of 'device' (a catalogue name) or 'profile' (a JSON file)")
            continue
        try:
            profile = _profile(entry, base)
        except (KeyError, OSError, ValueError, SchemaError) as error:
            errors.append(f"{where}: {error.args[0] if isinstance(error, KeyError) else error}")
            continue
        name = entry.id or profile.name
        for copy in range(entry.count):
            device_id = name if entry.count == 1 else f"{name}-{copy + 1}"
            members.append(FleetMember(device_id, profile, entry.examples, tuple(entry.labels)))
    duplicates = sorted(device_id for device_id, count in Counter(m.device_id for m in members).items() if count > 1)
    if duplicates:
        errors.append(f"devices: duplicate ids {duplicates}; give each entry an 'id'")
    return members, errors
