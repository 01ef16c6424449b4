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
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from fedge.coordinator.plans import FleetMember, PlannerOptions
from fedge.wire import DeviceProfile, SchemaError
from fedge.wire.schema import from_json
from fedge.profiles.catalogue import load_catalogue_profile

_TUPLE_OPTIONS = ("target_modules", "ranks")


class FleetError(ValueError):
    """The fleet file or planner options are wrong; the message lists every problem."""


@dataclass(frozen=True)
class Fleet:
    model: str | None
    options: PlannerOptions
    members: list[FleetMember]


def planner_options(raw: dict | None, where: str = "planner") -> tuple[PlannerOptions, list[str]]:
    """Options from a mapping, and the problems found (each prefixed with ``where``)."""
    raw = dict(raw or {})
    known = {f.name for f in fields(PlannerOptions)}
    errors = [f"{where}.{key}: unknown option" for key in sorted(set(raw) - known)]
    values = {key: tuple(value) if key in _TUPLE_OPTIONS and isinstance(value, list) else value for key, value in raw.items() if key in known}
    try:
        options = PlannerOptions(**values)
        errors += [f"{where}.{problem}" for problem in options.problems()]
    except TypeError as error:
        errors.append(f"{where}: {error}")
        options = PlannerOptions()
    return options, errors


def _profile(entry: dict, base: Path) -> DeviceProfile:
    if "device" in entry:
        return load_catalogue_profile(entry["device"])
    raw = json.loads((base / entry["profile"]).read_text())
    return from_json(DeviceProfile, raw, "profile")


def load_fleet(path: str | Path) -> Fleet:
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("devices"), list) or not raw["devices"]:
        raise FleetError(f"{path}: expected a mapping with a non-empty 'devices' list")
    options, errors = planner_options(raw.get("planner"))
    members: list[FleetMember] = []
    for index, entry in enumerate(raw["devices"]):
        where = f"devices[{index}]"
        if not isinstance(entry, dict) or ("device" in entry) == ("profile" in entry):
            errors.append(f"{where}: give exactly one of 'device' (a catalogue name) or 'profile' (a JSON file)")
            continue
        try:
            profile = _profile(entry, path.parent)
        except (KeyError, OSError, ValueError, SchemaError) as error:
            errors.append(f"{where}: {error}")
            continue
        count, examples = entry.get("count", 1), entry.get("examples", 500)
        if not isinstance(count, int) or count < 1 or not isinstance(examples, int) or examples < 1:
            errors.append(f"{where}: count and examples must be positive integers")
            continue
        name = entry.get("id", profile.name)
        for copy in range(count):
            device_id = name if count == 1 else f"{name}-{copy + 1}"
            members.append(FleetMember(device_id, profile, examples, tuple(entry.get("labels", ()))))
    duplicates = sorted(device_id for device_id, count in Counter(m.device_id for m in members).items() if count > 1)
    if duplicates:
        errors.append(f"devices: duplicate ids {duplicates}; give each entry an 'id'")
    if errors:
        raise FleetError(f"invalid fleet file {path}:\n  " + "\n  ".join(errors))
    return Fleet(raw.get("model"), options, members)
