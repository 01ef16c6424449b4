"""Seed statistics for a trial: Student-t confidence intervals of a mean, and paired comparisons against a baseline.

Runs of one trial share their seeds and data splits, so strategy X and the baseline are compared seed by seed: the
paired t-test on the differences (X − baseline), with Holm's step-down correction across all strategies compared
against the same baseline, so "significant" holds for the family at the stated level. Fewer than two seeds give no
interval and no test (NaN, never significant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its two-sided Student-t confidence interval (NaN bounds for fewer than two values)."""

    mean: float
    low: float
    high: float
    count: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Comparison:
    """One strategy against the baseline over the seeds both finished: the difference's interval, the paired t-test's
    p-value, Holm's adjusted p-value and whether it is significant at 1 − CONFIDENCE."""

    strategy: str
    baseline: str
    difference: Interval
    p_value: float
    adjusted_p: float
    significant: bool


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and t-interval of the finite ``values``."""
    finite = np.array([value for value in values if value is not None and not math.isnan(value)], dtype=np.float64)
    if finite.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(finite.mean())
    if finite.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + confidence) / 2, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size))
    return Interval(mean, mean - half, mean + half, int(finite.size))


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (NaN below two pairs)."""
    if differences.size < 2:
        return math.nan
    mean, spread = differences.mean(), differences.std(ddof=1)
    if spread <= 1e-12 * max(1.0, abs(mean)):  # every seed moved by the same amount (up to rounding): certain, unless that is 0
        return 1.0 if abs(mean) <= 1e-12 else 0.0
    return float(stats.ttest_1samp(differences, 0.0).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    tested = sorted((p, index) for index, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def compare(baseline: str, scores: dict[str, dict[int, float]], confidence: float = CONFIDENCE) -> list[Comparison]:
    """Every other entry of ``scores`` (name -> seed -> score) against ``scores[baseline]``, paired by seed."""
    reference = scores[baseline]
    names = [name for name in scores if name != baseline]
    differences = []
    for name in names:
        seeds = sorted(seed for seed in scores[name] if seed in reference and not math.isnan(scores[name][seed]) and not math.isnan(reference[seed]))
        differences.append(np.array([scores[name][seed] - reference[seed] for seed in seeds], dtype=np.float64))
    p_values = [paired_p_value(diff) for diff in differences]
    adjusted = holm(p_values)
    return [Comparison(name, baseline, interval(diff.tolist(), confidence), p, adjusted_p, not math.isnan(adjusted_p) and adjusted_p < 1 - confidence)
            for name, diff, p, adjusted_p in zip(names, differences, p_values, adjusted)]
