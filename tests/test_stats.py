"""Bootstrap intervals and seed spread: hand-computed cases, invariants, a naive cross-check."""

from __future__ import annotations

import numpy as np
import pytest

from regattn_lib.core.stats import GainInterval, bootstrap_mean_interval, paired_gain, seed_spread


def test_constant_differences_give_a_point_interval():
    # every query gains exactly 2 points: every resample's mean is 2
    gain = paired_gain([52.0, 12.0, 90.0], [50.0, 10.0, 88.0])
    assert (gain.gain, gain.low, gain.high) == (2.0, 2.0, 2.0)
    assert gain.n_queries == 3 and gain.n_seeds == 1 and np.isnan(gain.seed_sd)
    assert gain.excludes_zero


def test_interval_matches_a_naive_loop_with_the_same_draws():
    values = np.array([3.0, -1.0, 0.5, 7.0, 2.0])
    mean, low, high = bootstrap_mean_interval(values, n_boot=200, confidence=0.9, seed=4)
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 5, size=(200, 5))
    means = sorted(sum(values[j] for j in row) / 5 for row in idx)
    assert mean == pytest.approx(2.3)
    assert low == pytest.approx(np.quantile(means, 0.05))
    assert high == pytest.approx(np.quantile(means, 0.95))
    assert low < mean < high


def test_the_pairing_matters():
    # the baseline varies a lot between queries but the method tracks it: a tight interval
    base = np.array([10.0, 90.0, 30.0, 70.0, 50.0, 20.0])
    paired = paired_gain(base + np.array([1, 2, 1, 2, 1, 2]), base)
    assert paired.gain == pytest.approx(1.5)
    assert 1.0 <= paired.low < paired.high <= 2.0
    # unpaired, the same means would be hopelessly uncertain
    _, lo, hi = bootstrap_mean_interval(base + 1.5)
    assert hi - lo > 10 * (paired.high - paired.low)


def test_nan_queries_are_left_out_of_both_sides():
    g = paired_gain([np.nan, 60.0, 40.0], [10.0, 50.0, np.nan])
    assert g.n_queries == 1 and g.gain == 10.0


def test_seeds_average_and_spread():
    base = np.array([40.0, 60.0, 50.0, 30.0])
    seeds = np.stack([base + 1, base + 2, base + 6])  # per-seed gains 1, 2, 6
    g = paired_gain(seeds, base)
    assert g.gain == pytest.approx(3.0) and g.n_seeds == 3
    assert g.seed_sd == pytest.approx(np.std([1, 2, 6], ddof=1))
    assert "seeds sd 2.65" in g.text()
    assert seed_spread([1.0, 2.0, 6.0]) == pytest.approx((3.0, np.std([1, 2, 6], ddof=1)))


def test_text_and_zero():
    g = GainInterval(0.9, -0.1, 1.5, float("nan"), 50, 1)
    assert g.text() == "+0.90 [-0.10, +1.50]" and not g.excludes_zero
    with pytest.raises(ValueError, match="4 queries for the method, 3 for the baseline"):
        paired_gain([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_interval([1.0, 2.0], confidence=1.5)
