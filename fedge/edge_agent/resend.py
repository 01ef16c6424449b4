"""An update the coordinator has not answered yet, sent again until it is.

The coordinator answers every update it reads: a ``Receipt`` when it takes it, a ``Reject`` naming it when it
refuses it. A broker may still drop the update (or the answer) under load, so an agent that hears neither within
``wait_s`` of the broker taking the update sends the same update again (the same message id: the coordinator takes
it once and answers each copy), waiting twice as long each time, at most ``max_resends`` times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fedge.wire import AdapterUpdate

RECEIPT_WAIT_S = 30.0
MAX_RESENDS = 3


@dataclass
class _Unanswered:
    update: AdapterUpdate
    due: float  # monotonic time of the next resend
    resends: int = 0


class Resender:
    def __init__(self, wait_s: float = RECEIPT_WAIT_S, max_resends: int = MAX_RESENDS):
        self.wait_s = wait_s
        self.max_resends = max_resends
        self._waiting: _Unanswered | None = None

    def sent(self, update: AdapterUpdate) -> None:
        """``update`` has reached the broker: wait for its answer (it replaces any update still waiting)."""
        self._waiting = _Unanswered(update, time.monotonic() + self.wait_s)

    def answered(self, ref: str | None) -> bool:
        """A Receipt or Reject naming ``ref`` arrived; True when it answered the waiting update."""
        if self._waiting is not None and ref == self._waiting.update.message_id:
            self._waiting = None
            return True
        return False

    def forget_before(self, round_number: int) -> None:
        """Work for ``round_number`` arrived: an update for an earlier round no longer matters."""
        if self._waiting is not None and self._waiting.update.round < round_number:
            self._waiting = None

    def due(self) -> AdapterUpdate | None:
        """The update to send again now, if its wait is over (None once it has been sent ``max_resends`` times)."""
        waiting = self._waiting
        if waiting is None or time.monotonic() < waiting.due:
            return None
        if waiting.resends >= self.max_resends:
            self._waiting = None
            return None
        waiting.resends += 1
        waiting.due = time.monotonic() + self.wait_s * 2**waiting.resends
        return waiting.update

    @property
    def waiting(self) -> AdapterUpdate | None:
        return self._waiting.update if self._waiting is not None else None
