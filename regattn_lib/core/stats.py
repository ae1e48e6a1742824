"""Uncertainty of the numbers we publish: paired bootstrap intervals over queries, spread over
seeds.

A gain in mAP between two methods is a mean over queries of a per-query AP difference, so its
uncertainty comes from which queries the benchmark happens to have: resampling the queries with
replacement (the paired bootstrap: both methods see the same resampled queries) gives a
percentile interval of the gain. Training randomness is a second, separate source: the spread of
the gain over attention models trained with different seeds. Each interval is for one comparison
on its own (no correction for the many comparisons in a table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples (percentile intervals stable to about 0.05 mAP at 50 queries).
N_BOOTSTRAP = 10_000
#: Two-sided confidence of the intervals.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class GainInterval:
    """A gain in mAP points (mean over seeds), its paired-bootstrap interval over queries
    (``low``, ``high``), the spread over seeds (``seed_sd``: sample standard deviation, NaN with
    one seed), and the counts it rests on."""

    gain: float
    low: float
    high: float
    seed_sd: float
    n_queries: int
    n_seeds: int

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or entirely below zero."""
        return bool(self.low > 0 or self.high < 0)

    def text(self, digits: int = 2) -> str:
        """``+1.17 [+0.35, +1.49]`` (``, seeds sd 0.21`` with several seeds)."""
        f = f"{{:+.{digits}f}}"
        s = f"{f.format(self.gain)} [{f.format(self.low)}, {f.format(self.high)}]"
        if self.n_seeds > 1:
            s += f", seeds sd {self.seed_sd:.{digits}f}"
        return s


def bootstrap_mean_interval(
    values: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean of ``values`` (NaN dropped).

    ``n_boot`` resamples of the same size, drawn with replacement by a generator seeded with
    ``seed`` (the same numbers on every run). An empty input gives NaNs.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(v.mean()), float(low), float(high)


def paired_gain(
    method_aps: np.ndarray | Sequence,
    baseline_aps: np.ndarray | Sequence,
    n_boot: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> GainInterval:
    """The gain of a method over a baseline from per-query APs (in %), with its intervals.

    Parameters
    ----------
    method_aps:
        (Q,) per-query APs of the method, or (S, Q) for S seeds of a trained method.
    baseline_aps:
        (Q,) per-query APs of the baseline (or (S, Q), paired seed by seed).
    n_boot, confidence, seed:
        Bootstrap resamples, two-sided confidence and the resampling seed.

    The gain is the mean over seeds of (mAP method - mAP baseline); the interval resamples the
    queries of the seed-averaged per-query differences. Queries without positives (NaN AP) are
    left out of both sides.
    """
    m = np.atleast_2d(np.asarray(method_aps, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline_aps, dtype=np.float64))
    if m.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"paired_gain: {m.shape[-1]} queries for the method, {b.shape[-1]} for the baseline"
        )
    if b.shape[0] not in (1, m.shape[0]):
        raise ValueError(f"paired_gain: {b.shape[0]} baseline seeds for {m.shape[0]} method seeds")
    diff = m - b  # (S, Q)
    keep = ~np.isnan(diff).any(axis=0)
    diff = diff[:, keep]
    per_seed = diff.mean(axis=1) if diff.shape[1] else np.full(diff.shape[0], np.nan)
    gain, low, high = bootstrap_mean_interval(diff.mean(axis=0), n_boot, confidence, seed)
    sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
    return GainInterval(gain, low, high, sd, int(diff.shape[1]), int(m.shape[0]))


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of a metric over seeds; the sd is NaN for one seed."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
