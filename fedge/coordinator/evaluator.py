"""The held-out evaluation, on a thread of its own so that it never holds up a round.

The global model loads while devices register and prepare; the pretrained model (round 0) is scored then too, and
each round's state is scored while the next round runs. Scores come back as futures, in the order they were asked
for. An evaluation that takes long says so in the log every ``PROGRESS_EVERY_S``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedge.coordinator.evaluation import GlobalModel
from fedge.strategies import GlobalParts, Strategy

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0


class Evaluator:
    def __init__(self, load_model: Callable[[], GlobalModel], strategy: Strategy, metric: str):
        self.strategy = strategy
        self.metric = metric
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedge-evaluator")
        self._model = self._executor.submit(load_model)

    def model(self) -> GlobalModel:
        """The global model, once loaded (raises what loading raised)."""
        return self._model.result()

    def score(self, label: str, arrays: dict[str, np.ndarray]) -> Future[dict]:
        """The held-out score of ``arrays`` (``accuracy``: the task's headline metric, named by ``metric``) and loss,
        with classify's F1 or instruct's perplexity; NaN where the strategy has no global model."""
        return self._executor.submit(self._score, label, arrays)

    def _score(self, label: str, arrays: dict[str, np.ndarray]) -> dict:
        parts = self.strategy.global_parts(arrays)
        if parts is None:
            return {"accuracy": float("nan"), "loss": float("nan"), "metric": self.metric}
        done = threading.Event()
        started = time.monotonic()
        threading.Thread(target=_report_progress, args=(label, started, done), daemon=True, name="fedge-evaluation-progress").start()
        try:
            result = self.model().evaluate(parts)
        finally:
            done.set()
        log.info("evaluated %s in %.1f s: %s %.3f, loss %.3f", label, time.monotonic() - started, result.metric, result.accuracy, result.loss)
        record = {"accuracy": result.accuracy, "loss": result.loss, "metric": result.metric, "evaluation_s": round(time.monotonic() - started, 2)}
        if result.per_class_f1:
            record |= {"macro_f1": result.macro_f1, "per_class_f1": [round(f1, 4) for f1 in result.per_class_f1]}
        if math.isfinite(result.perplexity):
            record["perplexity"] = result.perplexity
        return record

    def save_adapter(self, parts: GlobalParts, directory: Path) -> None:
        """Write the global adapter in PEFT format (on the evaluator's thread: the model is its own)."""
        self._executor.submit(lambda: self.model().save(parts, directory)).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _report_progress(label: str, started: float, done: threading.Event) -> None:
    while not done.wait(PROGRESS_EVERY_S):
        log.info("still evaluating %s on the held-out data (%.0f s so far)", label, time.monotonic() - started)
