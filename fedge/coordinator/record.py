"""The run's record of rounds. A round is committed the moment it is aggregated: its global state is saved (the
commit point a resumed run starts from) and its record kept beside it; the record reaches ``metrics.jsonl`` once
the evaluator has scored the state, in round order, while the next round already runs. A run that died while a
round was being evaluated scores it when it resumes, so no committed round goes unrecorded."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from fedge.coordinator.evaluator import Evaluator
from fedge.coordinator.reports import RunDirectory
from fedge.privacy import DEFAULT_DELTA, epsilon
from fedge.strategies.server_optimizer import ServerMoments, ServerOptimizer
from fedge.wire import Evaluation

log = logging.getLogger(__name__)


class RunRecorder:
    def __init__(self, run_dir: RunDirectory, evaluator: Evaluator, privacy: dict, optimizer: ServerOptimizer = ServerOptimizer(),
                 on_record: Callable[[dict], None] = lambda record: None):
        """``on_record``: told each record as it is written (the writer's thread)."""
        self.run_dir = run_dir
        self.on_record = on_record
        self.evaluator = evaluator
        self.privacy = privacy
        self.moments = ServerMoments(optimizer)  # the server optimiser's, committed with each round's state
        self.startup: dict[str, float] = {}  # registration, planning and preparation times, recorded with the next round
        self.rounds_started = time.time()  # when the first round began (records' elapsed_s)
        self._writes: list[Future] = []
        self._contributions: Counter[str] = Counter()  # rounds each device contributed to, for its privacy budget
        self._client_evaluations: set[tuple[int, str]] = set()  # (round, agent) of evaluations agents reported
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedge-writer")  # updates, off the round path
        self._unsaved: list[tuple[int, str, dict[str, np.ndarray]]] = []  # accepted updates not yet handed to the writer

    def starting_point(self, resume: bool) -> tuple[int, dict[str, np.ndarray] | None]:
        """The round to start at and the state to start from (None: a fresh run)."""
        latest = self.run_dir.latest_global()
        if latest is None:
            if self.run_dir.metrics_file.exists():
                self.run_dir.metrics_file.unlink()
            return 1, None
        if not resume:
            raise RuntimeError(f"{self.run_dir.path} already holds round {latest[0]}; pass --resume or use a new run_dir")
        log.info("resuming after round %d from %s", latest[0], self.run_dir.path)
        self.run_dir.drop_rounds_after(latest[0])  # metrics of a round that died before its commit point
        for round_number, record in self.run_dir.pending_records():
            if round_number > latest[0]:
                self.run_dir.drop_pending_record(round_number)  # died before its state was saved: not committed
            else:
                log.info("round %d was committed but not evaluated before the run stopped; evaluating it now", round_number)
                self._score_and_write(round_number, self.run_dir.load_global(round_number), record)
        self._contributions.update(agent for record in self.run_dir.rounds() for agent in record.get("contributors", ()))
        self.moments = ServerMoments(self.moments.optimizer, self.run_dir.load_moments(latest[0]))
        return latest[0] + 1, latest[1]

    def record_start(self, arrays: dict[str, np.ndarray]) -> None:
        """Round 0: the starting state, committed like any round (a resumed run starts from the same one) and scored
        while devices register and prepare."""
        self.run_dir.save_pending_record(0, {"participants": [], "contributors": []})
        self.run_dir.save_global(0, arrays)
        self._score_and_write(0, arrays, {"participants": [], "contributors": []})

    def commit(self, round_number: int, arrays: dict[str, np.ndarray], record: dict) -> None:
        """Save the round (the commit point) and have its state scored; ``record`` is what the round reports."""
        self._contributions.update(record.get("contributors", ()))
        record = {**record, **self._privacy_spent(record.get("contributors", ())), "elapsed_s": round(time.time() - self.rounds_started, 2), **self.startup}
        self.startup = {}
        self.run_dir.save_pending_record(round_number, record)
        if self.moments.optimizer.name != "none":
            self.run_dir.save_moments(round_number, self.moments.to_tensors())
        self.run_dir.save_global(round_number, arrays)
        self._score_and_write(round_number, arrays, record)

    def _score_and_write(self, round_number: int, arrays: dict[str, np.ndarray], record: dict) -> None:
        scoring = self.evaluator.score(f"round {round_number}", arrays)
        self._writes.append(scoring)
        scoring.add_done_callback(lambda done: self._write(round_number, record, done))

    def _write(self, round_number: int, record: dict, scoring: Future) -> None:
        try:
            scores = scoring.result()
        except Exception as error:  # the round stays committed; its record says why it has no score
            log.exception("evaluating round %d failed", round_number)
            scores = {"accuracy": float("nan"), "loss": float("nan"), "evaluation_error": f"{type(error).__name__}: {error}"}
        self.run_dir.append_round({"round": round_number, **scores, **record})
        self.run_dir.drop_pending_record(round_number)
        self.on_record({"round": round_number, **scores, **record})
        log.info("round %d: %s %.3f loss %.3f", round_number, scores.get("metric", "accuracy"), scores["accuracy"], scores["loss"])

    def keep_update(self, round_number: int, agent_id: str, tensors: dict[str, np.ndarray]) -> None:
        """An accepted update for the run directory; ``save_kept_updates`` has them written."""
        self._unsaved.append((round_number, agent_id, tensors))

    def save_kept_updates(self) -> None:
        """Have the updates kept so far written by the writer's thread. The round engines call this once the next
        round's work is out, so the writing overlaps the devices' training rather than the arrival of their updates."""
        if self._unsaved:
            batch, self._unsaved = self._unsaved, []
            self._disk.submit(self._write_updates, batch)

    def _write_updates(self, batch: list[tuple[int, str, dict[str, np.ndarray]]]) -> None:
        try:
            for update in batch:
                self.run_dir.save_update(*update)
        except OSError:  # a full disk costs the audit copies, never the run
            log.exception("could not keep %d accepted updates in %s", len(batch), self.run_dir.path)

    def client_evaluation(self, evaluation: Evaluation) -> bool:
        """Record a device's own held-out score; False when it already reported that round."""
        if (evaluation.round, evaluation.agent_id) in self._client_evaluations:
            return False
        self.run_dir.append_client_eval({"round": evaluation.round, "agent": evaluation.agent_id, "accuracy": evaluation.accuracy, "loss": evaluation.loss, "examples": evaluation.num_examples})
        self._client_evaluations.add((evaluation.round, evaluation.agent_id))
        return True

    def reported_by(self, round_number: int, agents: list[str]) -> bool:
        """Whether every one of ``agents`` reported its evaluation of ``round_number``."""
        return all((round_number, agent) in self._client_evaluations for agent in agents)

    def close(self) -> None:
        """Wait for every record and update to be written."""
        self.save_kept_updates()
        self.flush()
        self._disk.shutdown(wait=True)
        self.evaluator.close()

    def flush(self) -> None:
        """Wait until every committed round is written."""
        for scoring in self._writes:
            try:
                scoring.result()
            except Exception:  # recorded by _write
                pass
        self._writes = []

    def _privacy_spent(self, contributors) -> dict:
        """With privacy on: each contributor's (ε, δ) budget after this round, counting every round it sent an
        update in (a resumed run counts the rounds recorded before)."""
        privacy = self.privacy
        if not privacy:
            return {}
        delta = float(privacy.get("delta", DEFAULT_DELTA))
        spent = {agent: round(epsilon(self._contributions[agent], float(privacy["noise_multiplier"]), delta), 4) for agent in sorted(contributors)}
        return {"privacy": {"clip_norm": privacy["clip_norm"], "noise_multiplier": privacy["noise_multiplier"], "delta": delta, "epsilon": spent}}
