"""Confidence intervals over prompts: every fidelity figure and every difference between two variants.

The unit of resampling is the prompt (its tokens are not independent of each other). A figure that is a
token-weighted mean over prompts (NLL, KL, agreement: per-prompt means weighted by the prompt's response tokens)
is resampled as the ratio sum(w * v) / sum(w); a per-prompt figure (answer agreement, GSM8K accuracy) with equal
weights. Intervals are 95% BCa intervals from `scipy.stats.bootstrap` (percentile where BCa is undefined, e.g.
almost constant data), with a fixed seed so that a figure is reproducible.

    low, high = mean_ci(per_prompt_nll, weights=tokens)
    diff, low, high = paired_diff_ci(kl_a, kl_b, weights=tokens)   # same prompts, both variants
    ratio, low, high = paired_ratio_ci(acc_variant, acc_original)  # "accuracy kept", same documents
    excludes_zero((low, high))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def _arrays(values: Sequence[float], weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.ndim != 1 or w.shape != v.shape:
        raise ValueError(f"values and weights must be 1-D and of one length (got {v.shape} and {w.shape})")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    return v, w


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    v, w = _arrays(values, weights)
    return float((v * w).sum() / w.sum())


def _ratio(v, w, axis=-1):
    return (v * w).sum(axis=axis) / w.sum(axis=axis)


def _diff(a, b, w, axis=-1):
    return _ratio(a, w, axis) - _ratio(b, w, axis)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int, seed: int):
    from scipy import stats

    point = float(statistic(*data))
    if len(data[0]) < 2 or all(np.ptp(d) == 0 for d in data[:-1]):
        return point, (point, point)  # one prompt, or every resample gives the same figure
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's "degenerate" warning: the percentile interval follows
            res = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                                  confidence_level=confidence, method=method, random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return point, (min(low, point), max(high, point))
    return point, (point, point)


def mean_ci(values: Sequence[float], weights: Sequence[float] | None = None, confidence: float = CONFIDENCE,
            n_resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """(low, high) of the `confidence` interval of the weighted mean of per-prompt `values`."""
    v, w = _arrays(values, weights)
    if len(v) == 0:
        raise ValueError("no prompts: a confidence interval needs at least one value")
    return _bootstrap((v, w), _ratio, confidence, n_resamples, seed)[1]


def paired_diff_ci(a: Sequence[float], b: Sequence[float], weights: Sequence[float] | None = None,
                   confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): two variants measured on the same prompts, resampled together."""
    va, w = _arrays(a, weights)
    vb, _ = _arrays(b, weights)
    if len(va) == 0:
        raise ValueError("no prompts: a confidence interval needs at least one value")
    point, (low, high) = _bootstrap((va, vb, w), _diff, confidence, n_resamples, seed)
    return point, low, high


def _quotient(a, b, axis=-1):
    num, den = a.mean(axis=axis), b.mean(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def paired_ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                    n_resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float] | None:
    """(mean(a) / mean(b), low, high) over the same units resampled together (a benchmark's documents: the share
    of the original's accuracy a variant keeps); None when mean(b) is 0 (nothing to keep)."""
    va, _ = _arrays(a, None)
    vb, _ = _arrays(b, None)
    if len(va) == 0 or len(va) != len(vb):
        raise ValueError("a ratio interval needs the same non-empty set of units on both sides")
    if vb.mean() <= 0:
        return None
    point, (low, high) = _bootstrap((va, vb, np.ones_like(va)), lambda x, y, w, axis=-1: _quotient(x, y, axis),
                                    confidence, n_resamples, seed)
    return point, low, high


def stratified_ratio_ci(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], confidence: float = CONFIDENCE,
                        n_resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float] | None:
    """Macro average over groups (benchmarks): (mean over groups of mean(a), divided by the same of b, low,
    high), each group's units resampled within the group (a percentile interval: BCa has no stratified form in
    scipy). None when the denominator is 0."""
    groups = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in pairs]
    if not groups or any(len(a) == 0 or len(a) != len(b) for a, b in groups):
        raise ValueError("every group needs the same non-empty set of units on both sides")
    den = np.mean([b.mean() for _, b in groups])
    if den <= 0:
        return None
    point = float(np.mean([a.mean() for a, _ in groups]) / den)
    rng = np.random.default_rng(seed)
    num_s, den_s = np.zeros(n_resamples), np.zeros(n_resamples)
    for a, b in groups:
        idx = rng.integers(0, len(a), size=(n_resamples, len(a)))
        num_s += a[idx].mean(axis=1) / len(groups)
        den_s += b[idx].mean(axis=1) / len(groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den_s > 0, num_s / np.where(den_s > 0, den_s, 1.0), np.nan)
    ratios = ratios[np.isfinite(ratios)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1 - alpha]) if len(ratios) else (point, point)
    return point, float(min(low, point)), float(max(high, point))


def excludes_zero(ci: Sequence[float] | None) -> bool:
    """Whether an interval (low, high) of a difference lies entirely on one side of 0."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)
