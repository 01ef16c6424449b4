"""The fleet as an operator sees it at one moment: each device's state, plan, last contact and training progress,
the round and its phase, and the held-out metric so far. Built on the coordinator's own thread (nothing else reads
its registry), then handed whole to the live page, ``fedge status`` and the Prometheus collector."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fedge.coordinator.plans import DevicePlan
from fedge.coordinator.registry import AgentRecord, Registry

MAX_REPORTED_STEPS = 1_000_000  # a device claiming more steps than this reports no progress (its beat is untrusted)


@dataclass(frozen=True)
class TrainingProgress:
    """A device's own word on how far its round's training got (its heartbeats say it, so it is only shown)."""

    round: int
    step: int
    steps: int
    reported_unix: float


@dataclass(frozen=True)
class DeviceStatus:
    agent_id: str
    profile: str
    state: str  # online, silent, preparing, ready, training, idle, refused, quarantined
    plan: str  # e.g. "nf4 · rank 16 · 8 layers · 10 steps of 16", or why it has none
    last_contact_s: float | None  # seconds since anything arrived from it (None: never)
    step: int = 0
    steps: int = 0


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    phase: str
    round: int
    rounds: int
    metric: str
    curve: tuple[tuple[int, float], ...]  # (round, held-out score), round 0 the pretrained model
    devices: tuple[DeviceStatus, ...]
    enrolled: int | None  # None: an insecure run has no enrolment
    updates_in: int
    updates_expected: int
    updated_unix: float

    def to_dict(self) -> dict:
        return asdict(self)


def plan_summary(plan: DevicePlan | None) -> str:
    if plan is None:
        return "not planned yet"
    if not plan.feasible:
        return f"refused: {plan.reason}"
    return f"{plan.quantization} · rank {max(plan.ranks)} · {plan.depth} layers · {plan.local_steps} steps of {plan.batch_size}"


def device_status(record: AgentRecord, registry: Registry, plans: dict[str, DevicePlan], beats: dict[str, str], progress: dict[str, TrainingProgress],
                  quarantined: set[str], now: float, horizon: float) -> DeviceStatus:
    """One device's line: quarantine and refusal first, then silence (against the liveness ``horizon``), then what its
    last heartbeat said."""
    heard = registry.liveness.last_heard(record.agent_id)
    plan = record.plan or plans.get(record.agent_id)
    if record.agent_id in quarantined:
        state = "quarantined"
    elif plan is not None and not plan.feasible:
        state = "refused"
    elif not registry.liveness.is_live(record.agent_id, horizon):
        state = "silent"
    else:
        state = beats.get(record.agent_id, "online")
    done = progress.get(record.agent_id)
    step, steps = (done.step, done.steps) if done is not None and state == "training" else (0, 0)
    return DeviceStatus(record.agent_id, record.profile.name, state, plan_summary(plan), round(now - heard, 1) if heard is not None else None, step, steps)


def checked_progress(round_number: int, step: int, steps: int, reported_unix: float) -> TrainingProgress | None:
    """A heartbeat's progress when it is plausible (0 ≤ step ≤ steps ≤ ``MAX_REPORTED_STEPS``), else None."""
    if not 0 <= step <= steps <= MAX_REPORTED_STEPS:
        return None
    return TrainingProgress(round_number, step, steps, reported_unix)
