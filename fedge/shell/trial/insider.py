"""A compromised device for field trials of the robust aggregation rules: an enrolled agent that trains like any
other, then rewrites its update before signing it.

Its movement m = x − x⁰ (what it sends minus what it started the round from) becomes:

    sign_flip  −m, claiming ``CLAIMED_EXAMPLES`` examples (registered as such in its hello)
    scale      −200·m, the sign-flipped update scaled (L2 norm hundreds of times an honest one)
    constant   the same fixed direction every round, at 5× the RMS of its honest movement
    bias       m plus a small fixed direction every round (half its movement's RMS): inside the honest spread

The trial runner starts it (``python -m fedge.shell.trial.run_insider ATTACK AGENT-ARGS…``, the arguments of
``fedge agent``) for the devices its ``insiders`` names. Never part of a deployment: only trials run it.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from fedge.adapters import upload
from fedge.edge_agent.agent import EdgeAgent
from fedge.shell.trial.config import ATTACKS
from fedge.wire import AdapterUpdate, Hello

CLAIMED_EXAMPLES = 3000


def poison(attack: str, tensors: dict[str, np.ndarray], start: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The attacked tensors (in the dtype sent); ``start`` holds what the round started from, by key."""
    out = {}
    for key, sent in tensors.items():
        base = start.get(key, np.zeros_like(sent)).astype(np.float32)
        move = sent.astype(np.float32) - base
        rms = float(np.sqrt(np.mean(np.square(move)))) if move.size else 0.0
        fixed = np.random.default_rng([seed, zlib.crc32(key.encode())]).choice((-1.0, 1.0), size=move.shape).astype(np.float32)
        if attack == "sign_flip":
            move = -move
        elif attack == "scale":
            move = -200.0 * move
        elif attack == "constant":
            move = 5.0 * rms * fixed
        elif attack == "bias":
            move = move + 0.5 * rms * fixed
        else:
            raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
        out[key] = (base + move).astype(sent.dtype)
    return out


class InsiderAgent(EdgeAgent):
    """An ``EdgeAgent`` whose updates are poisoned by ``attack`` before they are signed."""

    def __init__(self, *args, attack: str, **kwargs):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
        super().__init__(*args, **kwargs)
        self.attack = attack
        self._start: dict[str, np.ndarray] = {}

    def _apply(self, session, view) -> None:
        super()._apply(session, view)
        self._start = upload(session.model, session.lora, session.recipe)

    def _send(self, message) -> int:
        if isinstance(message, Hello) and self.attack == "sign_flip":
            message = replace(message, num_examples=CLAIMED_EXAMPLES)
        if isinstance(message, AdapterUpdate):
            count = CLAIMED_EXAMPLES if self.attack == "sign_flip" else message.num_examples
            message = replace(message, num_examples=count, tensors=poison(self.attack, message.tensors, self._start, zlib.crc32(self.agent_id.encode())))
        return super()._send(message)
