"""Measurements on models and hidden states (pure tensor math; no UI).

    from hopscotch_core import metrics
    metrics.mmd2(x, y)                  # unbiased MMD^2, RBF kernel, median-heuristic bandwidth
    metrics.singular_values(model)      # DataFrame: layer, matrix, sigma_max (one row per weight matrix)

MMD (Gretton et al., 2012): for samples x [n, d] and y [m, d] and kernel k(a, b) = exp(-|a - b|^2 / (2 sigma^2)),

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m)

an unbiased estimate (it can be slightly negative when the distributions are equal). sigma is `bandwidth` when
given, else the median Euclidean distance between distinct points of the pooled sample (the median heuristic).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn

from .adapters import get_adapter
from .errors import HopscotchError


class MetricError(HopscotchError, ValueError):
    """Input a metric cannot be computed on (too few samples, mismatched shapes, bad layer index)."""


def _pairwise_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b).pow(2)  # (n, m)


def median_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    z = torch.cat([x, y]).double()
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    return float(np.median(d[iu[0], iu[1]].cpu().numpy()))  # the usual median (mean of the middle two)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between samples x [n, d] and y [m, d] (see module docstring)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise MetricError(f"mmd2 needs two [n, d] tensors with the same d; got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise MetricError(f"mmd2 needs at least 2 samples on each side; got {len(x)} and {len(y)}")
    x, y = x.detach().double(), y.detach().double()
    sigma = float(bandwidth) if bandwidth is not None else median_distance(x, y)
    if not sigma > 0:
        raise MetricError("bandwidth must be positive (all points identical?)")
    g = 1.0 / (2 * sigma * sigma)
    kxx, kyy, kxy = (torch.exp(-g * _pairwise_sq(a, b)) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


_SV_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights(model: nn.Module):
    """(layer, matrix name, weight) for every linear weight in every layer's attention and MLP."""
    ad = get_adapter(model)
    for i, layer in enumerate(ad.layers):
        for part in (ad.layer.attn_name, ad.layer.mlp_name):
            for name, mod in getattr(layer, part).named_modules():
                if isinstance(mod, nn.Linear):
                    yield i, name, mod.weight


def singular_values(model: nn.Module, top_k: int | None = None):
    """DataFrame (layer, matrix, sigma_max[, spectrum]): the largest singular value of every weight matrix.

    sigma_max is the matrix 2-norm (torch.linalg.matrix_norm(ord=2), on the weight's device, in float32);
    with top_k, a `spectrum` column holds the top_k singular values. Cached per model object and top_k.
    """
    import pandas as pd

    key = (top_k, sum(int(p._version) for p in model.parameters()))
    cached = _SV_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1].copy()
    rows = []
    with torch.no_grad():
        for layer, name, w in _weights(model):
            w32 = w.float()
            row = {"layer": layer, "matrix": name, "sigma_max": float(torch.linalg.matrix_norm(w32, ord=2))}
            if top_k:
                row["spectrum"] = torch.linalg.svdvals(w32)[:top_k].cpu().tolist()
            rows.append(row)
    df = pd.DataFrame(rows)
    _SV_CACHE[model] = (key, df)
    return df.copy()
