"""Bootstrap intervals over prompts, checked against a plain resampling loop written here and against known cases."""

from __future__ import annotations

import numpy as np
import pytest

from hopscotch_core.measure import stats


def _loop_percentile(v, w, n=4000, seed=1):
    """Reference: resample prompts with replacement, the weighted mean of each resample, its 2.5/97.5 percentiles."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n, len(v)))
    means = (v[idx] * w[idx]).sum(1) / w[idx].sum(1)
    return np.percentile(means, [2.5, 97.5])


def test_interval_of_a_weighted_mean_matches_a_resampling_loop():
    rng = np.random.default_rng(0)
    v, w = rng.normal(0.5, 0.2, 60), rng.integers(5, 80, 60).astype(float)
    low, high = stats.mean_ci(v, w)
    ref = _loop_percentile(v, w)
    point = (v * w).sum() / w.sum()
    assert low < point < high
    assert abs(low - ref[0]) < 0.25 * (ref[1] - ref[0]) and abs(high - ref[1]) < 0.25 * (ref[1] - ref[0])


def test_coverage_of_the_mean_of_normal_samples():
    """About 95% of intervals from independent samples contain the true mean (loose bounds: 40 trials)."""
    rng = np.random.default_rng(3)
    hits = sum(lo <= 1.0 <= hi for lo, hi in (stats.mean_ci(rng.normal(1.0, 1.0, 40), n_resamples=500, seed=s)
                                               for s in range(40)))
    assert 32 <= hits <= 40


def test_paired_difference_sees_a_small_shift_that_unpaired_noise_hides():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1.0, 50)  # large prompt-to-prompt spread
    a, b = base + 0.05 + rng.normal(0, 0.01, 50), base
    diff, low, high = stats.paired_diff_ci(a, b)
    assert diff == pytest.approx((a - b).mean())
    assert 0 < low < diff < high and stats.excludes_zero((low, high))
    lo_a, hi_a = stats.mean_ci(a)
    lo_b, hi_b = stats.mean_ci(b)
    assert lo_a < hi_b and lo_b < hi_a  # the two separate intervals overlap


def test_identical_variants_and_constant_values():
    v = [0.3, 0.7, 0.2, 0.9]
    diff, low, high = stats.paired_diff_ci(v, v)
    assert (diff, low, high) == (0.0, 0.0, 0.0) and not stats.excludes_zero((low, high))
    assert stats.mean_ci([1.0] * 8) == (1.0, 1.0)
    assert stats.mean_ci([0.4]) == (0.4, 0.4)


def test_bad_input():
    with pytest.raises(ValueError, match="no prompts"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match="one length"):
        stats.mean_ci([1.0, 2.0], weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        stats.mean_ci([1.0, 2.0], weights=[1.0, -1.0])
