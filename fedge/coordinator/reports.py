"""The run directory: resolved config, per-round metrics (JSON lines), global checkpoints, final adapter, plot.

    run_dir/
      config.json            the resolved coordinator config
      plan.json              the capacity plan: per device bits, ranks, depth, predicted memory, time and bytes
      metrics.jsonl          one JSON object per round (round 0 = before fine-tuning)
      client_eval.jsonl      agents' held-out accuracy of the model they hold after each round (when they evaluate)
      globals/round_NNN.safetensors   global factors after each round (for resuming and auditing)
      globals/round_NNN.json          a committed round's record while its evaluation is still running
      updates/round_NNN/AGENT.safetensors   every accepted update, written as it arrives
      adapter/               the final global adapter in PEFT format
      metrics.png            accuracy and bytes per round
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fedge.coordinator.plan_report import write_plan
from fedge.files import write_file_atomic


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        (self.path / "globals").mkdir(parents=True, exist_ok=True)

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def plot_file(self) -> Path:
        return self.path / "metrics.png"

    def write_config(self, config: dict) -> None:
        (self.path / "config.json").write_text(json.dumps(config, indent=2, default=list))

    @property
    def plan_file(self) -> Path:
        return self.path / "plan.json"

    def write_plan(self, plan: dict) -> None:
        """The capacity plan the run follows (rewritten when an agent joins later)."""
        write_plan(plan, self.plan_file)

    @property
    def replay_file(self) -> Path:
        return self.path / "replay_counters.json"

    def save_replay_counters(self, counters: list[tuple[str, str, int]]) -> None:
        """The last envelope counter accepted per device and stream, so a resumed run refuses replays (atomic)."""
        write_file_atomic(self.replay_file, json.dumps(counters))

    def replay_counters(self) -> list[tuple[str, str, int]]:
        try:
            saved = json.loads(self.replay_file.read_text())
        except (OSError, ValueError):
            return []
        return [tuple(entry) for entry in saved if isinstance(entry, list) and len(entry) == 3] if isinstance(saved, list) else []

    def append_round(self, record: dict) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    @property
    def client_eval_file(self) -> Path:
        return self.path / "client_eval.jsonl"

    def append_client_eval(self, record: dict) -> None:
        with self.client_eval_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def client_evals(self) -> list[dict]:
        if not self.client_eval_file.exists():
            return []
        return [json.loads(line) for line in self.client_eval_file.read_text().splitlines() if line.strip()]

    def rounds(self) -> list[dict]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def drop_rounds_after(self, round_number: int) -> None:
        kept = [record for record in self.rounds() if record["round"] <= round_number]
        write_file_atomic(self.metrics_file, "".join(json.dumps(record) + "\n" for record in kept))

    def _pending_file(self, round_number: int) -> Path:
        return self.path / "globals" / f"round_{round_number:03d}.json"

    def save_pending_record(self, round_number: int, record: dict) -> None:
        """A round's record before its evaluation is in (so a crash while evaluating loses nothing)."""
        write_file_atomic(self._pending_file(round_number), json.dumps(record))

    def pending_records(self) -> list[tuple[int, dict]]:
        """Committed rounds whose record never reached metrics.jsonl, in round order."""
        written = {record["round"] for record in self.rounds()}
        return [(number, json.loads(path.read_text())) for number, path in self._round_files(".json") if number not in written]

    def drop_pending_record(self, round_number: int) -> None:
        self._pending_file(round_number).unlink(missing_ok=True)

    def load_global(self, round_number: int) -> dict[str, np.ndarray]:
        return load_file(self.path / "globals" / f"round_{round_number:03d}.safetensors")

    def save_update(self, round_number: int, agent_id: str, arrays: dict[str, np.ndarray]) -> None:
        folder = self.path / "updates" / f"round_{round_number:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({key: np.ascontiguousarray(value) for key, value in arrays.items()}, folder / f"{agent_id}.safetensors")

    def save_global(self, round_number: int, arrays: dict[str, np.ndarray]) -> None:
        target = self.path / "globals" / f"round_{round_number:03d}.safetensors"
        partial = target.with_suffix(".partial")
        save_file({key: np.ascontiguousarray(value, dtype=np.float32) for key, value in arrays.items()}, partial)
        partial.replace(target)  # atomic: a crash never leaves a half-written checkpoint

    def save_moments(self, round_number: int, tensors: dict[str, np.ndarray]) -> None:
        """The server optimiser's moments after ``round_number``, saved before its global (so every committed global
        has them)."""
        target = self.path / "globals" / f"moments_{round_number:03d}.safetensors"
        partial = target.with_suffix(".partial")
        save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()}, partial)
        partial.replace(target)

    def load_moments(self, round_number: int) -> dict[str, np.ndarray]:
        """The moments saved with ``round_number`` (none saved: empty, the optimiser starts afresh)."""
        path = self.path / "globals" / f"moments_{round_number:03d}.safetensors"
        return load_file(path) if path.exists() else {}

    def latest_global(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """The last completed round and its global factors, or None for a fresh run."""
        found = self._round_files(".safetensors")
        if not found:
            return None
        round_number, path = found[-1]
        return round_number, load_file(path)

    def _round_files(self, suffix: str) -> list[tuple[int, Path]]:
        """(round, path) of every globals/round_NNN``suffix``, in round order; any other name (a stray
        round_NNN.partial.json an older version left behind) is skipped."""
        pattern = re.compile(rf"round_(\d+){re.escape(suffix)}")
        return sorted((int(match.group(1)), path) for path in (self.path / "globals").glob(f"round_*{suffix}") if (match := pattern.fullmatch(path.name)))

    def plot(self, baselines: dict[str, list[float]] | None = None) -> Path:
        """Accuracy per round (with any ``baselines``: label -> accuracy from round 0 on) and bytes per round."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.rounds()
        rounds = [r["round"] for r in records]
        figure, (accuracy_axis, bytes_axis) = plt.subplots(1, 2, figsize=(11, 4))
        accuracy_axis.plot(rounds, [r["accuracy"] for r in records], marker="o", label="federated (global model)")
        for label, accuracies in (baselines or {}).items():
            accuracy_axis.plot(range(len(accuracies)), accuracies, marker="s", linestyle="--", label=label)
        accuracy_axis.set(xlabel="round", ylabel="held-out accuracy", title="Global model accuracy", ylim=(0, 1))
        if baselines:
            accuracy_axis.legend()
        accuracy_axis.grid(alpha=0.3)
        up = [sum(r.get("bytes_up", {}).values()) / 1e6 for r in records]
        down = [sum(r.get("bytes_down", {}).values()) / 1e6 for r in records]
        bytes_axis.bar([x - 0.2 for x in rounds], up, width=0.4, label="up (agents → coordinator)")
        bytes_axis.bar([x + 0.2 for x in rounds], down, width=0.4, label="down (coordinator → agents)")
        bytes_axis.set(xlabel="round", ylabel="MB", title="Bytes on the wire per round")
        bytes_axis.set_ylim(0, 1.35 * max(up + down + [1e-3]))
        bytes_axis.legend(loc="upper left")
        figure.tight_layout()
        figure.savefig(self.plot_file, dpi=100)
        plt.close(figure)
        return self.plot_file
