"""What the coordinator remembers of each device's updates across rounds: its trust, and whether it is quarantined.

Agreement (the cosine a device's movement had with the others', ``fedge.coordinator.robust``) is remembered with
``memory`` λ too: ā ← λ·ā + (1 − λ)·a, starting at a device's first a, so that one round an honest device on a
skewed shard spends at odds with the rest does not undo its history, while a device that never agrees (a constant
direction: a ≈ 0 every round) is judged by that from its first round. Trust is a device's weight factor from the
robust rules, remembered with λ: after a round whose factor was f, the device's trust is t ← min(f, λ·t + (1 − λ)·f). A device that
disagreed with the majority once regains its weight over several rounds instead of at once, so an attacker cannot
alternate poisoned rounds with honest-looking ones at full weight; the round's own evidence always caps it. A round
that gave no evidence (no consensus to judge by) leaves trust where it was.
A device named an outlier in ``quarantine_after`` rounds in a row that it contributed to is quarantined for the rest
of the run (0: never). Rounds it sat out neither extend nor break its streak.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

log = logging.getLogger(__name__)


class Reputation:
    def __init__(self, memory: float, quarantine_after: int) -> None:
        self.memory = memory
        self.quarantine_after = quarantine_after
        self.trust: dict[str, float] = {}
        self.agreement: dict[str, float] = {}
        self.streaks: dict[str, int] = {}
        self.held: dict[str, str] = {}

    def remembered(self, agent_id: str, factor: float | None) -> float:
        """The trust a device would have after this round's factor (what its weight is scaled by); a round that gave
        no evidence (None) leaves it where it was."""
        previous = self.trust.get(agent_id, 1.0)
        return previous if factor is None else min(factor, self.memory * previous + (1 - self.memory) * factor)

    def recalled(self, agent_id: str, agreement: float) -> float:
        """A device's remembered agreement ā after this round's a."""
        previous = self.agreement.get(agent_id)
        return agreement if previous is None else self.memory * previous + (1 - self.memory) * agreement

    def observe(self, round_number: int, trust: Mapping[str, float], outliers: Iterable[str], agreement: Mapping[str, float] | None = None) -> list[str]:
        """Commit one round: the trust each contributor ended with, its agreement, and its outlier streak; returns the
        devices quarantined by it."""
        outliers = set(outliers)
        self.agreement.update({agent: self.recalled(agent, value) for agent, value in (agreement or {}).items()})
        self.trust.update(trust)
        newly = []
        for agent_id in trust:
            self.streaks[agent_id] = self.streaks.get(agent_id, 0) + 1 if agent_id in outliers else 0
            if self.quarantine_after and self.streaks[agent_id] >= self.quarantine_after and agent_id not in self.held:
                self.held[agent_id] = f"quarantined after round {round_number}: an outlier in {self.streaks[agent_id]} rounds in a row"
                log.warning("%s is quarantined: its updates were outliers in %d rounds in a row", agent_id, self.streaks[agent_id])
                newly.append(agent_id)
        return newly

    def reason(self, agent_id: str) -> str | None:
        """Why a device gets no work (quarantined), or None."""
        return self.held.get(agent_id)

    def replay(self, records: Iterable[dict]) -> None:
        """Rebuild trust and streaks from committed round records (a resumed run), oldest first."""
        for record in records:
            robust = record.get("robust") or {}
            self.observe(record.get("round", 0), robust.get("trust", {}), robust.get("outliers", ()), robust.get("agreement", {}))
