"""What a finished run directory holds for export and evaluation, read without torch: its saved config and task,
and whether it can be exported at all (checked before the heavy imports, so a wrong directory fails at once)."""

from __future__ import annotations

import json
from pathlib import Path

from fedge.wire import TaskSpec

PER_DEVICE_ONLY = ("ce-lora",)  # no global model: export a device's own adapter
ADAPTER_ONLY = ("fedex-lora", "flora", "full")  # part of their model is outside any one adapter


def run_task(run_dir: Path) -> tuple[dict, TaskSpec]:
    """A run directory's saved config and its task."""
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json; not a coordinator's run directory (in a demo or trial: RUN/coordinator)")
    config = json.loads(path.read_text())
    return config, task_spec(config["task"])


def task_spec(task: dict) -> TaskSpec:
    """A task as ``asdict`` wrote it to JSON (labels as a list)."""
    return TaskSpec(**{**task, "labels": tuple(task.get("labels", ()))})


def exportable(run_dir: Path, adapter: Path | None = None) -> tuple[dict, Path]:
    """The run's config and the adapter directory to export: the run's final one, or a device's ``adapter``;
    ``ValueError`` or ``FileNotFoundError`` saying why not (no global model, an unfinished run)."""
    config, _ = run_task(run_dir)
    strategy = config["strategy"]
    if adapter is None and strategy in PER_DEVICE_ONLY:
        raise ValueError(f"{strategy} has no global model: export one device's personalised model with --adapter DIR (the directory its `fedge agent --save DIR` wrote)")
    if adapter is not None and strategy in ADAPTER_ONLY:
        raise ValueError(f"{strategy} keeps frozen-weight changes outside a device's adapter: export the run's global model (no --adapter)")
    source = adapter or run_dir / "adapter"
    if not (source / "adapter_config.json").exists():
        raise FileNotFoundError(f"{source}: no adapter_config.json" + ("" if adapter else "; the run has not finished"))
    return config, source
