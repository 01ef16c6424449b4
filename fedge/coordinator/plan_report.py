"""A fleet plan as a rich table and as JSON (``fedge plan`` prints both; the coordinator keeps the JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from fedge.coordinator.plans import FleetPlan
from fedge.files import write_file_atomic

BITS = {"nf4": 4, "int8": 8, "bf16": 16, "fp16": 16, "fp32": 32}


def _ranks(ranks: list[int]) -> str:
    """Top rank first, e.g. ``16×2 8×2 4×2`` for a six-layer profile."""
    runs: list[list[int]] = []
    for rank in reversed(ranks):
        if runs and runs[-1][0] == rank:
            runs[-1][1] += 1
        else:
            runs.append([rank, 1])
    return " ".join(f"{rank}×{count}" for rank, count in runs)


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes < 2**30 else f"{num_bytes / 2**30:.2f} GiB"


def _kinds(devices: list[dict]) -> list[tuple[dict, list[str]]]:
    """Devices with the same plan (all but their ids), in first-seen order, each with the ids that share it."""
    kinds: dict[str, tuple[dict, list[str]]] = {}
    for device in devices:
        key = json.dumps({k: v for k, v in device.items() if k != "device_id"}, sort_keys=True)
        kinds.setdefault(key, (device, []))[1].append(device["device_id"])
    return list(kinds.values())


def _label(device: dict, ids: list[str]) -> str:
    if len(ids) > 1:
        label = f"{device['profile_name']} ×{len(ids)}"
    else:
        label = ids[0] if ids[0] == device["profile_name"] else f"{ids[0]} ({device['profile_name']})"
    return label + (" †" if device.get("simulated") else "")


def plan_table(plan: dict, per_device: bool = False) -> Table:
    """The plan (as ``plan_to_dict`` writes it): one row per kind of device (devices whose plans are the same), or
    one row per device with ``per_device``."""
    options = plan["options"]
    rows = [(device, [device["device_id"]]) for device in plan["devices"]] if per_device else _kinds(plan["devices"])
    table = Table(title=f"Plan for {plan['model']}: {len(plan['devices'])} devices, {options['strategy']}, seq {options['seq_len']}, margin {options['safety_margin']:.0%}, straggler bound {options['straggler_bound']}× (median round {plan['median_round_seconds']:.1f} s)")
    for column in ("device", "bits", "ranks (top first)", "depth", "batch", "steps", "memory predicted / available", "step", "round", "prepare", "bytes up / down per round"):
        table.add_column(column, justify="left" if column in ("device", "ranks (top first)") else "right")
    for device, ids in rows:
        label = _label(device, ids)
        if not device["feasible"]:
            table.add_row(label, "—", f"[red]refused: {device['reason']}[/]", "", "", "", f"— / {_size(device['available_bytes'])}", "", "", "", "")
            continue
        table.add_row(
            label,
            str(BITS[device["quantization"]]),
            _ranks(device["ranks"]),
            str(len(device["layers"])),
            str(device["batch_size"]),
            str(device["local_steps"]),
            f"{_size(device['memory']['total'])} / {_size(device['available_bytes'])}" + (" ckpt" if device["gradient_checkpointing"] else ""),
            f"{device['step_seconds']:.3f} s" + ("" if device["calibrated"] else " *"),
            f"{device['round_seconds']:.1f} s",
            f"{device['setup_seconds']:.1f} s",
            f"{_size(device['bytes_up'])} / {_size(device['bytes_down'])}",
        )
    notes = []
    if any(device["feasible"] and not device["calibrated"] for device in plan["devices"]):
        notes.append("* uncalibrated backend (fedge/profiles/calibration/cuda.json holds defaults until measured)")
    if any(device.get("simulated") for device in plan["devices"]):
        notes.append("† simulated: memory limit, step and round times are the real device's figures; bits are what this host's CPU runs")
    table.caption = "\n".join(notes) or None
    return table


def groups_table(plan: dict) -> Table:
    table = Table(title="HierFedLoRA groups")
    for column in ("group", "members", "label L1 to fleet", "depth", "aggregations per global round", "round"):
        table.add_column(column)
    for group in plan["groups"]:
        table.add_row(str(group["index"]), ", ".join(group["members"]), f"{group['label_distance']:.3f}", str(group["depth"]), str(group["frequency"]), f"{group['round_seconds']:.1f} s")
    return table


def plan_to_dict(plan: FleetPlan) -> dict:
    return {
        "model": plan.model,
        "options": asdict(plan.options),
        "median_round_seconds": plan.median_round_seconds,
        "devices": [device.to_dict() for device in plan.devices],
        "groups": [asdict(group) for group in plan.groups],
    }


def write_plan(plan: dict, path: str | Path) -> None:
    """Written whole or not at all (a reader never sees half a plan)."""
    write_file_atomic(Path(path), json.dumps(plan, indent=2) + "\n")
