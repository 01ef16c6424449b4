"""Robust aggregation: no single enrolled device, nor a minority of them, may steer the model.

Every update is first turned into its movement m_i = x_i − x_i⁰ from the tensors the device started from (its view
of the global state; B folded by its scaling s_i, so movements of every rank live in the state's coordinates, and
a device of rank r_i holds the first r_i rows of A / columns of B). Then, on by default for every strategy:

1. **Norm bound from the round's majority.** ρ_i = ‖m_i‖ / √(size of m_i) is a movement's RMS (so a rank-16
   device is not judged longer than a rank-4 one for having more numbers). Any m_i with ρ_i > c·median_j ρ_j is
   scaled down to that bound (c = ``norm_multiple``, default 3): a ×200 update moves no further than an honest one,
   and the factor it was scaled by also caps its trust (3) this round. An orthonormal factor (``full``'s right
   factor, checked on arrival) carries no length: it is left out of ρ_i and of the scaling, so the bound scales the
   change itself (its left factor) by the factor, not by the factor's square.
2. **A robust combiner** on what the strategy averages, where its coordinates mean the same on every device
   (``Strategy.coordinatewise``; FLoRA's stacked factors do not, so it gets 1 and 4 only):
   - ``winsorized_mean`` (default): at every coordinate held by n ≥ 3 trusted devices (3 below), values below
     their (k+1)-th smallest or above their (k+1)-th largest are clamped to them, k = max(1, ⌊β·n⌋)
     (β = ``trim_fraction``, 0.2), at most ⌊(n−1)/2⌋; an untrusted device's values are clamped into that range
     too, and play no part in setting it. The strategy then averages the clamped values, so a minority contributes
     values inside the honest range and cannot drag it. (With n = 4 this is the coordinate-wise median.)
   - ``coordinate_median``: the same with k = ⌊(n−1)/2⌋.
   - ``geometric_median``: Weiszfeld's iteration finds z = argmin Σ w_i ‖m_i − z‖; each device's weight is scaled
     by min(1, median_j ‖m_j − z‖ / ‖m_i − z‖) (the geometric median is the mean under weights ∝ 1/‖m_i − z‖), so
     far-off devices count little. Movements of every rank are compared zero-padded to the largest shape.
   - ``mean``: none (the norm bound and the weight cap still hold).
   A strategy whose coordinates differ between devices (FLoRA, ``full``) gets 1 and 4 whatever the combiner: its
   factors cannot be compared coordinate by coordinate, nor by their distance.
3. **Trust from agreement** (the coordinate-wise combiners, measured before anything is clamped). A sign-flipped
   or off-direction update disagrees with the majority even where its values look ordinary one coordinate at a time.
   - *Agreement*: a_i = cos(m_i, r_i), r_i the mean of the judges' values (its own left out) clamped into the
     judges' central band (the (k+1)-th smallest … (k+1)-th largest, k = ⌊(n − 2)/2⌋ of n judges: the middle
     two values for even n), over the coordinates n ≥ 3 judges hold. The band, not the combiner's range in 2:
     two insiders who push a coordinate the same way are its two largest values, which a range trimming one value
     per end leaves whole, so each finds the other in its reference; two of ten sending random directions at a
     few times the honest size seemed to agree as much as honest devices did (a ≈ 0.3; in the band, a ≈ 0).
   - *Judges*: the devices trusted before the round (remembered trust at least 1 / ``outlier_factor``), so an
     attacker caught once is part of nobody's reference. A second look leaves out those the first one caught, and
     each device keeps the better of its two looks: in a first round, attackers who are many among a block's
     holders (two of the six devices that train the deepest ranks) can pull its reference away from the honest
     holders, and the second look clears them; it never condemns a device the first look trusted (no cascade).
     When too few devices are trusted to judge any block, everyone judges, as in a first round.
   - *Factor*: a device is judged by its remembered agreement ā_i ← λ·ā_i + (1 − λ)·a_i
     (``fedge.coordinator.reputation``; ā_i = a_i in its first round), so one round an honest device on a skewed
     shard spends at odds with the rest does not undo its history. It keeps its full weight down to
     ā_i = median ā / ``outlier_factor`` (the median over the devices trusted before the round); below that its
     weight falls in proportion, to zero at ā_i ≤ 0. An a_i at or below −median a this round (as far against
     the majority as the majority is with itself) takes all of it at once, whatever the history: a device that
     turns to a sign flip is caught in the round it turns.
   - *No consensus*: without a positive median, or when the first look would distrust most of the devices judged
     (the rules assume the attackers are a minority; late in a run honest non-IID movements can barely agree),
     the round is no evidence: nobody loses weight, and nobody regains it.
   - *Reach*: the factor applies to all of a device's coordinates. On the blocks fewer than three trusted devices
     hold (the layers and ranks only it, or it and one other device, trains), which no majority can clamp, a
     device of trust t < 1 moves them t·m_i + (1 − t)·m̄, m̄ the mean movement of the block's other trusted
     holders as the strategy weighs them (none: m̄ = 0, the block stays put), and an outlier (t under
     1 / ``outlier_factor``) takes m̄ itself: trust earned where there is a majority is what lets a device steer
     the rest, and a distrusted device's weight does not hold back the honest holder it shares a block with (as
     a zeroed movement did: an insider on the laptop damped what the Jetson learnt in the deep layers by a sixth).
   - *Scale*: past ``MAX_REFERENCE`` (1,024) judges, a fresh random sample of them sets each block's reference
     and range, so the rules stay linear in the fleet.
4. **A weight cap that shrinks with the number of contributors**: no device's example count carries more than
   min(``max_weight_share``, ``share_factor``/n) of the total (share_factor 1.5: 0.375 of four, 0.15 of ten),
   so a device that claims many examples cannot buy the aggregate, nor pull the median. The cap applies to the
   counts, before trust scales them: trust only ever takes weight away, so a device whose share grows because
   others lost theirs has not bought it (and a device left with almost no weight is never lifted to the cap).

The factor is remembered across rounds (``trust_memory``, ``fedge.coordinator.reputation``): a device that disagreed
regains its weight over several rounds. The strategy aggregates x_i⁰ + m̃_i (the bounded, combined movement) with
the capped, trust-scaled weights; a device whose weight reaches zero is left out. A device is named an outlier in a round when its movement was scaled
down or its weight factor fell below 1 / ``outlier_factor``. With ``quarantine_after`` = N (0, off, by default: on
non-IID shards an honest device's late-round updates can disagree as much), N outlier rounds in a row and it gets
no more work for the rest of the run, its reason in every later round's record.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from fedge.coordinator.aggregation_guard import capped_weights, update_norm
from fedge.coordinator.geometric_median import median_distances
from fedge.strategies import ClientUpdate
from fedge.strategies.base import B_SUFFIX, CHANGE_RIGHT_SUFFIX, State

COMBINERS = ("winsorized_mean", "coordinate_median", "geometric_median", "mean")
MIN_MAJORITY = 3  # fewer contributors than this have no majority to bound against
MAX_REFERENCE = 1024  # more judges than this: a fresh random sample of them sets a block's reference and range


@dataclass(frozen=True)
class RobustRules:
    """The rules' settings; a config's are checked against ``config_schema.RobustSection``."""

    combiner: str = "winsorized_mean"
    norm_multiple: float = 3.0  # c: movements with an RMS over c × the round's median are scaled down to it (0: off)
    trim_fraction: float = 0.2  # β: the winsorized mean clamps max(1, ⌊β·n⌋) values at each end of every coordinate
    share_factor: float = 1.5  # no device carries more than share_factor / n of the weight (and max_weight_share)
    outlier_factor: float = 2.0  # agreement under the median / this lowers a device's weight (module docstring)
    trust_memory: float = 0.8  # λ: how slowly a device that disagreed regains its weight (fedge.coordinator.reputation)
    quarantine_after: int = 0  # outlier rounds in a row before a device gets no more work (0: never)


class Memory(Protocol):
    """What the rules need of a device's past (``fedge.coordinator.reputation.Reputation``)."""

    def remembered(self, agent_id: str, factor: float | None) -> float:
        """Its trust after this round's factor (None: no evidence)."""

    def recalled(self, agent_id: str, agreement: float) -> float:
        """Its remembered agreement ā after this round's a."""


@dataclass(frozen=True)
class Guarded:
    """The updates to aggregate (bounded, combined, weights in ``num_examples``) and what was done, per device."""

    updates: list[ClientUpdate]
    shares: dict[str, float]  # each device's final share of the aggregate
    scaled: dict[str, float] = field(default_factory=dict)  # devices whose movement was scaled down, by the factor
    agreement: dict[str, float] = field(default_factory=dict)  # this round's a_i (geometric median: typical / own distance)
    trust: dict[str, float] = field(default_factory=dict)  # the weight factor each device ended with
    outliers: tuple[str, ...] = ()

    def to_record(self, rules: RobustRules) -> dict:
        return {
            "combiner": rules.combiner,
            "shares": {agent: round(share, 4) for agent, share in sorted(self.shares.items())},
            "scaled_down": {agent: round(factor, 4) for agent, factor in sorted(self.scaled.items())},
            "agreement": {agent: round(value, 4) for agent, value in sorted(self.agreement.items())},
            "trust": {agent: round(value, 4) for agent, value in sorted(self.trust.items())},
            "outliers": list(self.outliers),
        }


def guard_updates(updates: Sequence[ClientUpdate], weights: Sequence[float], starts: Sequence[State], rules: RobustRules, max_share: float, coordinatewise: bool = True,
                  memory: Memory | None = None) -> Guarded:
    """Apply the rules (module docstring) to one aggregation's updates; ``weights`` are their example counts (or
    staleness-discounted counts), ``starts`` the tensors each device started from (missing keys start at zero),
    ``memory`` holds the devices' past trust and agreement (none: every device judged on this round alone).
    Devices whose weight ends at zero are left out of ``updates`` (their share is 0)."""
    moved = [movement(update, start) for update, start in zip(updates, starts)]
    agents = [update.agent_id for update in updates]
    scaled = bound_norms(moved, agents, rules.norm_multiple)
    cap = min(max_share, rules.share_factor / len(updates)) if len(updates) >= MIN_MAJORITY else max_share
    weights = capped_weights(list(weights), cap)  # on the claimed counts, before the combiner: they buy no pull on the median
    floor = 1.0 / rules.outlier_factor

    def remember(agent: str, factor: float | None) -> float:
        evidence = factor if agent not in scaled else scaled[agent] if factor is None else min(factor, scaled[agent])  # far past the bound: evidence in proportion
        if memory is None:
            return 1.0 if evidence is None else evidence
        return memory.remembered(agent, evidence)

    agreement: dict[str, float] = {}
    unchecked: list[tuple[str, tuple[slice, ...], list[int]]] = []
    clamps = len(updates) >= MIN_MAJORITY and coordinatewise and rules.combiner in ("winsorized_mean", "coordinate_median")
    trim_fraction = rules.trim_fraction if rules.combiner == "winsorized_mean" else 0.5
    trust = [remember(agent, None) for agent in agents]
    if clamps:
        recall = memory.recalled if memory is not None else lambda agent, cosine: cosine
        trust, agreement = judged_trust(moved, agents, trust, remember, recall, rules.outlier_factor)
        unchecked = winsorize(moved, trim_fraction, [factor >= floor for factor in trust])
    elif len(updates) >= MIN_MAJORITY and coordinatewise and rules.combiner == "geometric_median":
        distances = median_distances(moved, weights)
        typical = statistics.median(distances) or 1.0
        agreement = {agent: typical / max(distance, 1e-3 * typical) for agent, distance in zip(agents, distances)}
        trust = [remember(agent, min(1.0, value)) for agent, value in agreement.items()]
    final = [weight * factor for weight, factor in zip(weights, trust)]  # capped once, before: trust only takes weight away
    for key, cell, owners in unchecked:
        settle_unchecked(moved, key, cell, owners, final, trust, floor)
    total = sum(final) or 1.0
    outliers = tuple(sorted(set(scaled) | {agent for agent, factor in zip(agents, trust) if factor < floor}))
    rebuilt = [replace(update, num_examples=weight, tensors=rebuild(update, start, m), trust=factor) for update, start, m, weight, factor in zip(updates, starts, moved, final, trust) if weight > 0]
    shares = {agent: weight / total for agent, weight in zip(agents, final)}
    return Guarded(rebuilt, shares, scaled, agreement, dict(zip(agents, trust)), outliers)


def judged_trust(moved: list[State], agents: list[str], prior: list[float], remember: Callable[[str, float | None], float], recall: Callable[[str, float], float],
                 outlier_factor: float) -> tuple[list[float], dict[str, float]]:
    """Each device's trust and agreement after this round's looks (module docstring, 3): judged first by those
    trusted before the round, then again without those the first look caught."""
    floor = 1.0 / outlier_factor
    trusted_before = [factor >= floor for factor in prior]

    def look(judges: list[bool]) -> tuple[list[float | None], list[float | None]]:
        cosines = agreements(moved, judges)
        factors = trust_factors([None if cosine is None else recall(agent, cosine) for agent, cosine in zip(agents, cosines)], outlier_factor, trusted_before)
        known = [cosine for cosine, judge in zip(cosines, trusted_before) if cosine is not None and judge]
        typical = statistics.median(known) if known else 0.0
        # This round alone, as far against the majority as the majority is with itself: no history buys that back.
        return cosines, [0.0 if cosine is not None and typical > 0 and cosine <= -typical else factor for cosine, factor in zip(cosines, factors)]

    looked, factors = look(trusted_before)
    if all(cosine is None for cosine in looked) and not all(trusted_before):  # too few trusted to judge any block: everyone judges, as in a first round
        looked, factors = look([True] * len(agents))
    agreement = {agent: cosine for agent, cosine in zip(agents, looked) if cosine is not None}
    judged = [factor for factor in factors if factor is not None]
    if 2 * sum(factor >= floor for factor in judged) < len(judged):  # distrusting most devices is no consensus
        return prior, agreement
    trust = [remember(agent, factor) for agent, factor in zip(agents, factors)]
    if (judges := [factor >= floor for factor in trust]) != trusted_before:
        # A second look without those the first one caught: a device judged against a reference they had pulled
        # away may be cleared by it, never condemned (each device keeps the better of its two looks).
        again, factors = look(judges)
        for index, (agent, factor) in enumerate(zip(agents, factors)):
            if factor is not None and (cleared := remember(agent, factor)) > trust[index]:
                trust[index], agreement[agent] = cleared, again[index]
    return trust, agreement


def trust_factors(cosines: list[float | None], outlier_factor: float, judges: Sequence[bool]) -> list[float | None]:
    """Each device's weight factor from its agreement a_i (the cosine of its movement with the other judges' clamped mean, on
    the coordinates a majority holds): 1 down to a bound b = median(a) / ``outlier_factor`` (the median over the
    ``judges``, the devices trusted before the round), then a_i / b, 0 at a_i ≤ 0. None where there is no evidence:
    for a device with no agreement, and for everyone when the judges' median is not positive (no consensus to judge
    by: nobody loses weight, and nobody regains it)."""
    known = [cosine for cosine, judge in zip(cosines, judges) if cosine is not None and judge] or [cosine for cosine in cosines if cosine is not None]
    typical = statistics.median(known) if known else 0.0
    if typical <= 0:
        return [None] * len(cosines)
    bound = typical / outlier_factor
    return [None if cosine is None else min(1.0, max(0.0, cosine / bound)) for cosine in cosines]


def movement(update: ClientUpdate, start: State) -> State:
    """m_i per key in the state's coordinates (float32; B times the device's scaling)."""
    out = {}
    for key, sent in update.tensors.items():
        base = start.get(key)
        value = sent.astype(np.float32) - (base.astype(np.float32) if base is not None and base.shape == sent.shape else 0.0)
        out[key] = value * np.float32(update.spec.scaling) if key.endswith(B_SUFFIX) else value
    return out


def rebuild(update: ClientUpdate, start: State, moved: State) -> State:
    """x⁰ + m̃ in the device's coordinates, in the dtype it sent."""
    out = {}
    for key, sent in update.tensors.items():
        value = moved[key] / np.float32(update.spec.scaling) if key.endswith(B_SUFFIX) else moved[key]
        base = start.get(key)
        if base is not None and base.shape == sent.shape:
            value = value + base.astype(np.float32)
        out[key] = value.astype(sent.dtype)
    return out


def bound_norms(moved: list[State], agents: list[str], multiple: float) -> dict[str, float]:
    """Scale movements whose RMS exceeds ``multiple`` × the median RMS down to it, in place; the factor per device.
    Orthonormal factors are neither measured nor scaled (module docstring, 1)."""
    if multiple <= 0 or len(moved) < MIN_MAJORITY:
        return {}
    lengths = [{key: value for key, value in m.items() if not key.endswith(CHANGE_RIGHT_SUFFIX)} for m in moved]
    sizes = [sum(value.size for value in m.values()) for m in lengths]
    rms = [update_norm(m) / np.sqrt(size) if size else 0.0 for m, size in zip(lengths, sizes)]
    bound = multiple * statistics.median(rms)
    scaled = {}
    for agent, m, value in zip(agents, lengths, rms):
        if bound > 0 and value > bound:
            factor = bound / value
            for tensor in m.values():
                tensor *= np.float32(factor)
            scaled[agent] = float(factor)
    return scaled


def _majority_cells(moved: list[State], among: Sequence[bool]):
    """(key, cell, holders, judges) for every block of every key: the devices holding it, and those of them ``among``
    allows to set its range."""
    for key in sorted({key for m in moved for key in m}):
        holders = [index for index, m in enumerate(moved) if key in m]
        for cell, members in cells([moved[index][key].shape for index in holders]):
            owners = [holders[member] for member in members]
            yield key, cell, owners, [owner for owner in owners if among[owner]]


def _sampled(judges: list[int]) -> list[int]:
    """The judges, or, past ``MAX_REFERENCE`` of them, a random sample that size, drawn afresh each time (so that
    no device can arrange to be in it); the reference and range it sets are estimates of the full ones."""
    if len(judges) <= MAX_REFERENCE:
        return judges
    return sorted(np.random.default_rng().choice(judges, MAX_REFERENCE, replace=False).tolist())


def _clamp_range(stack: np.ndarray, trim_fraction: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The (k+1)-th smallest and largest value of every column: the combiner's range, k = max(1, ⌊β·n⌋) at most
    ⌊(n − 1)/2⌋ (the median), or with ``trim_fraction`` None the reference's central band, k = ⌊(n − 2)/2⌋, so
    that a reference left without one of its n values is not the median of the rest (three judges: no clamping,
    each judge against the mean of the other two)."""
    count = stack.shape[0]
    trim = (count - 2) // 2 if trim_fraction is None else min(max(1, int(trim_fraction * count)), (count - 1) // 2)
    if trim == 0:
        return stack.min(axis=0), stack.max(axis=0)
    bounds = np.partition(stack, (trim, count - 1 - trim), axis=0)
    return bounds[trim], bounds[count - 1 - trim]


def agreements(moved: list[State], judges: Sequence[bool]) -> list[float | None]:
    """Each device's agreement: the cosine between its movement and the mean of the ``judges``' values (a judge's
    own left out) after clamping them into the judges' central band, over the blocks n ≥ 3 judges hold (None
    for a device that holds none of them). Past ``MAX_REFERENCE`` judges a random sample of them stands in (its
    members' own values are then left in: one of 1,024 hardly moves the mean). Nothing is changed."""
    dots, norms, reference_norms = (np.zeros(len(moved)) for _ in range(3))
    for key, cell, owners, judging in _majority_cells(moved, judges):
        if len(judging) < MIN_MAJORITY:
            continue
        stack = np.stack([moved[owner][key][cell] for owner in owners]).reshape(len(owners), -1)
        position = {owner: row for row, owner in enumerate(owners)}
        sample = [position[judge] for judge in _sampled(judging)]
        count = len(sample)
        clamped = np.clip(stack[sample], *_clamp_range(stack[sample], None))
        total = clamped.sum(axis=0, dtype=np.float64).astype(np.float32)
        with_total, total_norm = (stack @ total).astype(np.float64), float(np.dot(total, total))
        dot, reference_norm = with_total / count, np.full(len(owners), total_norm / count**2)
        if count == len(judging):  # each judge against the others: r_i = (S − c_i) / (n − 1)
            own = np.einsum("ij,ij->i", stack[sample], clamped, dtype=np.float64)
            dot[sample] = (with_total[sample] - own) / (count - 1)
            reference_norm[sample] = (total_norm - 2 * (clamped @ total) + np.einsum("ij,ij->i", clamped, clamped, dtype=np.float64)) / (count - 1) ** 2
        dots[owners] += dot
        norms[owners] += np.einsum("ij,ij->i", stack, stack, dtype=np.float64)
        reference_norms[owners] += reference_norm
    return [float(dot / np.sqrt(norm * ref)) if norm > 0 and ref > 0 else None for dot, norm, ref in zip(dots, norms, reference_norms)]


def winsorize(moved: list[State], trim_fraction: float, trusted: Sequence[bool]) -> list[tuple[str, tuple[slice, ...], list[int]]]:
    """Clamp every holder's values of each block into the (k+1)-th smallest … (k+1)-th largest of its ``trusted``
    holders' values, where n ≥ 3 trusted devices hold it, in place (an outlier's values play no part in the range,
    so they cannot drag the honest ones toward them). Returns the blocks (key, cell, holders) fewer than three
    trusted devices hold, which nothing could clamp."""
    unchecked = []
    for key, cell, owners, judges in _majority_cells(moved, trusted):
        if len(judges) < MIN_MAJORITY:
            unchecked.append((key, cell, owners))
            continue
        sample = _sampled(judges)
        low, high = _clamp_range(np.stack([moved[judge][key][cell] for judge in sample]).reshape(len(sample), -1), trim_fraction)
        for owner in owners:
            block = moved[owner][key][cell]
            moved[owner][key][cell] = np.clip(block.reshape(-1), low, high).reshape(block.shape)
    return unchecked


def settle_unchecked(moved: list[State], key: str, cell: tuple[slice, ...], owners: list[int], pulls: Sequence[float], trust: Sequence[float], floor: float) -> None:
    """One block no majority holds (module docstring, 3, *Reach*): each holder of trust t < 1 moves it
    t·m + (1 − t)·m̄, m̄ the ``pulls``-weighted mean of the other holders trusted at least ``floor`` (none: 0), and
    one under ``floor`` takes m̄ itself. In place, linear in the holders."""
    counted = {owner for owner in owners if trust[owner] >= floor and pulls[owner] > 0}
    total = sum(pulls[owner] for owner in counted)
    weighted = sum(pulls[owner] * moved[owner][key][cell].astype(np.float64) for owner in counted) if counted else 0.0
    for owner in owners:
        if trust[owner] >= 1.0:
            continue
        block = moved[owner][key][cell]
        own_pull = pulls[owner] if owner in counted else 0.0
        others = total - own_pull
        settled = (weighted - own_pull * block) / others if others > 0 else 0.0
        keep = trust[owner] if trust[owner] >= floor else 0.0
        moved[owner][key][cell] = keep * block + (1 - keep) * settled


def cells(shapes: list[tuple[int, ...]]) -> list[tuple[tuple[slice, ...], list[int]]]:
    """Blocks of a key's coordinates, each with the indices of the arrays that hold all of it: shapes differ by rank
    along one or both axes (A: r×k, B: d×r, a core r×r), and a device of rank r holds the first r of them."""
    edges = [sorted({0, *(shape[axis] for shape in shapes)}) for axis in range(len(shapes[0]))]
    out = []
    for block in np.ndindex(*(len(axis_edges) - 1 for axis_edges in edges)):
        ends = [edges[axis][index + 1] for axis, index in enumerate(block)]
        members = [i for i, shape in enumerate(shapes) if all(extent >= end for extent, end in zip(shape, ends))]
        if members:
            out.append((tuple(slice(edges[axis][index], end) for axis, (index, end) in enumerate(zip(block, ends))), members))
    return out
