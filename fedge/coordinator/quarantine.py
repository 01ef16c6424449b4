"""Devices whose updates keep standing out: counted round by round, and given no more work after too many."""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


class Quarantine:
    """A device named an outlier in ``after`` rounds in a row that it contributed to is quarantined for the rest of
    the run (``after`` = 0: never). Rounds it sat out neither extend nor break its streak."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.streaks: dict[str, int] = {}
        self.held: dict[str, str] = {}

    def observe(self, round_number: int, contributors: Iterable[str], outliers: Iterable[str]) -> list[str]:
        """Count one committed round; returns the devices quarantined by it."""
        outliers = set(outliers)
        newly = []
        for agent_id in contributors:
            self.streaks[agent_id] = self.streaks.get(agent_id, 0) + 1 if agent_id in outliers else 0
            if self.after and self.streaks[agent_id] >= self.after and agent_id not in self.held:
                self.held[agent_id] = f"quarantined after round {round_number}: an outlier in {self.streaks[agent_id]} rounds in a row"
                log.warning("%s is quarantined: its updates were outliers in %d rounds in a row", agent_id, self.streaks[agent_id])
                newly.append(agent_id)
        return newly

    def reason(self, agent_id: str) -> str | None:
        return self.held.get(agent_id)

    def replay(self, records: Iterable[dict]) -> None:
        """Rebuild the streaks from committed round records (a resumed run), oldest first."""
        for record in records:
            robust = record.get("robust") or {}
            self.observe(record.get("round", 0), record.get("contributors", ()), robust.get("outliers", ()))
