"""Measurements on models and hidden states (pure tensor math; no UI).

    from hopscotch_core.measure import metrics
    metrics.mmd2(x, y)                  # unbiased MMD^2, RBF kernel, median-heuristic bandwidth
    metrics.singular_values(model)      # DataFrame: layer, matrix, sigma_max (one row per weight matrix)

MMD (Gretton et al., 2012): for samples x [n, d] and y [m, d] and kernel k(a, b) = exp(-|a - b|^2 / (2 sigma^2)),

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m)

an unbiased estimate (it can be slightly negative when the distributions are equal). sigma is `bandwidth` when
given, else the median Euclidean distance between distinct points of the pooled sample (the median heuristic).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.families import get_family
from ..method.data import example_spans, forward_rows, row_logits
from ..errors import HopscotchError
from ..engine.loading import read_derived, weights_stamp, write_derived
from .cached import cached_singular_values  # noqa: F401  (re-exported: read without torch there)


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
    ad = get_family(model)
    for i, layer in enumerate(ad.layers):
        for part in (ad.layer.attn_name, ad.layer.mlp_name):
            for name, mod in getattr(layer, part).named_modules():
                if isinstance(mod, nn.Linear):
                    yield i, name, mod.weight


def singular_values(model: nn.Module, top_k: int | None = None):
    """DataFrame (layer, matrix, sigma_max[, spectrum]): the largest singular value of every weight matrix.

    sigma_max is the matrix 2-norm (torch.linalg.matrix_norm(ord=2), on the weight's device, in float32);
    with top_k, a `spectrum` column holds the top_k singular values. Cached per model object and top_k, and on
    disk (HOPSCOTCH_CACHE/derived) for a model as load_model loaded it (loading.weights_stamp), so a restarted app
    draws it at once.
    """
    import pandas as pd

    key = (top_k, sum(int(p._version) for p in model.parameters()))
    cached = _SV_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1].copy()
    stamp = weights_stamp(model)
    kind = f"singular-values-{top_k or 0}"
    rows = (read_derived(kind, stamp) or {}).get("rows")
    if rows is None:
        rows = []
        with torch.no_grad():
            for layer, name, w in _weights(model):
                w32 = w.float()
                row = {"layer": layer, "matrix": name, "sigma_max": float(torch.linalg.matrix_norm(w32, ord=2))}
                if top_k:
                    row["spectrum"] = torch.linalg.svdvals(w32)[:top_k].cpu().tolist()
                rows.append(row)
        write_derived(kind, stamp, {"rows": rows})
    df = pd.DataFrame(rows)
    _SV_CACHE[model] = (key, df)
    return df.copy()


# ------------------------------------------------------------------------------------------------- fidelity
def example_index(row) -> torch.Tensor:
    """(N,) int64: for each response position of a packed `row`, the index (into the examples given to data.pack)
    of the example it belongs to (the row's example spans, data.example_spans)."""
    slot = torch.zeros(row.input_ids.shape[1], dtype=torch.long)  # (T,) example slot within the row
    for j, (a, b) in enumerate(example_spans(row)):
        slot[a:b] = j
    ids = torch.as_tensor(list(row.example_ids), dtype=torch.long)
    return ids[slot[row.positions.cpu()]]


def compare(hs, rows, variants: dict[str, dict], per_example: bool = False) -> dict[str, dict]:
    """The original model against several modified ones, on packed rows of its own answers (data.pack).

    `variants` maps a name to configure() arguments ({"skipped": [...], "scales": ..., "skipped_mlp": [...]}).
    Per variant, per-token means over the response tokens: `nll` (and `ppl`) on those answers, `kl` =
    KL(original || modified) of the next-token distributions, `agreement` = share of positions where both top-1
    tokens agree (teacher-forced). "original" holds the original model's own nll/ppl. The original logits are
    computed once per row for all variants; the handle is left reset (all ones, nothing skipped).

    With `per_example`, each entry also holds `examples`: per example given to data.pack (in that order), its
    response `tokens` and its own token means `nll` (and, for a variant, `kl`, `agreement`); None for an example
    with no response tokens. The token-weighted mean of those per-example means is the overall figure, so
    stats.mean_ci(values, weights=tokens) is its interval. Computed in the same forward passes.
    """
    zero = {"nll": 0.0, "kl": 0.0, "agree": 0.0}
    tot = {name: dict(zero) for name in ["original", *variants]}
    n_ex = 1 + max((max(r.example_ids) for r in rows if r.example_ids), default=-1) if per_example else 0
    per = {name: {k: torch.zeros(n_ex, dtype=torch.float64) for k in zero} for name in tot}
    count = torch.zeros(n_ex, dtype=torch.float64)
    n = 0
    with torch.no_grad():
        for row in rows:
            hs.reset()
            lo = row_logits(hs.model, row)
            lpo = torch.log_softmax(lo, -1)
            tgt = row.targets.to(lo.device)
            ex = example_index(row) if per_example else None

            def add(name: str, key: str, values: torch.Tensor, ex=ex) -> None:  # values (N,): per position
                tot[name][key] += float(values.sum())
                if ex is not None:
                    per[name][key].index_add_(0, ex, values.double().cpu())

            add("original", "nll", torch.nn.functional.nll_loss(lpo, tgt, reduction="none"))
            for name, v in variants.items():
                hs.configure(v.get("skipped", ()), v.get("scales"), v.get("skipped_mlp", ()),
                             v.get("channel_scales"), v.get("lora"))
                lm = row_logits(hs.model, row)
                lpm = torch.log_softmax(lm, -1)
                add(name, "nll", torch.nn.functional.nll_loss(lpm, tgt, reduction="none"))
                add(name, "kl", (lpo.exp() * (lpo - lpm)).sum(-1))
                add(name, "agree", (lo.argmax(-1) == lm.argmax(-1)).float())
            if ex is not None:
                count.index_add_(0, ex, torch.ones(len(ex), dtype=torch.float64))
            n += row.n_tokens
    hs.reset()
    if n == 0:
        raise MetricError("no response tokens to measure fidelity on")
    out = {}
    for name, t in tot.items():
        nll = t["nll"] / n
        out[name] = {"nll": nll, "ppl": math.exp(nll), "tokens": n}
        if name != "original":
            out[name].update(kl=t["kl"] / n, agreement=t["agree"] / n)
        if per_example:
            keys = ("nll",) if name == "original" else ("nll", "kl", "agree")
            means = {("agreement" if k == "agree" else k): [float(per[name][k][i] / count[i]) if count[i] else None
                                                            for i in range(n_ex)] for k in keys}
            out[name]["examples"] = {"tokens": [int(c) for c in count], **means}
    return out


def fidelity(hs, rows, skipped, scales=None, skipped_mlp=()) -> dict:
    """`compare` for one modified model: {"nll", "ppl", "kl", "agreement", "tokens"}."""
    return compare(hs, rows, {"m": {"skipped": skipped, "scales": scales, "skipped_mlp": skipped_mlp}})["m"]


def sample_positions(total: int, max_tokens: int, seed: int = 0) -> torch.Tensor:
    """At most `max_tokens` of the token positions 0..total-1 (rows laid end to end), a seeded random choice in
    random order: (n,) int64, n = min(total, max_tokens)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:max_tokens]


class _Stop(Exception):
    """Raised inside a probe to abandon a forward pass when should_stop() turns true."""


def sampled_states(hs, rows, layers: Sequence[int], positions: torch.Tensor,
                   on_layer: Callable[[int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict[int, torch.Tensor] | None:
    """One forward pass of the model as the handle is now configured; per layer in `layers`, the output hidden
    states at `positions` (indices into all tokens of `rows` laid end to end), in the order of `positions`:
    {layer: (n, C) float32 CPU}. Only those positions are kept (memory n x C per layer, whatever the length);
    rows holding none of them are not run. `on_layer(i)` is called after each layer of each row run;
    `should_stop()` is asked at each layer and, when true, abandons the pass (returns None).
    """
    positions = torch.as_tensor(positions, dtype=torch.long).cpu()
    order = torch.argsort(positions)
    ordered = positions[order]
    plan, off = [], 0
    for row in rows:
        t = int(row.input_ids.shape[1])
        lo, hi = (int(torch.searchsorted(ordered, v)) for v in (off, off + t))
        if hi > lo:
            plan.append((row, ordered[lo:hi] - off))  # local positions in this row, ascending
        off += t
    if len(ordered) and int(ordered[-1]) >= off:
        raise MetricError(f"position {int(ordered[-1])} is past the end of the rows ({off} tokens)")
    got: dict[int, list[torch.Tensor]] = {int(i): [] for i in layers}
    local: list[torch.Tensor] = []

    def probe(i: int, x: torch.Tensor, x1: torch.Tensor, out: torch.Tensor) -> None:
        if should_stop is not None and should_stop():
            raise _Stop
        if i in got:
            got[i].append(out[0].detach().index_select(0, local[0].to(out.device)).float().cpu())  # (n_row, C)
        if on_layer is not None:
            on_layer(i)

    try:
        with hs.probe(probe):
            for row, where in plan:
                local[:] = [where]
                forward_rows(hs.model, [row])
    except _Stop:
        return None
    states = {}
    for i, g in got.items():
        cat = torch.cat(g)  # (n, C) at the positions in ascending order
        states[i] = torch.empty_like(cat)
        states[i][order] = cat  # back to the order of `positions`
    return states


def layer_indices(hs, layers) -> list[int]:
    """`layers` (default: all of the handle's layers) as a checked list of layer indices."""
    n_layers = hs.num_layers
    wanted = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    bad = [i for i in wanted if not 0 <= i < n_layers]
    if bad:
        raise MetricError(f"layer index out of range: {bad}; the model has {n_layers} layers (0..{n_layers - 1})")
    if not wanted:
        raise MetricError("no layers to measure")
    return wanted


def row_tokens(rows) -> int:
    """All token positions of `rows` (packed rows laid end to end)."""
    return sum(int(r.input_ids.shape[1]) for r in rows)


def layer_mmd(hs, rows, skipped, scales=None, max_tokens: int = 512, seed: int = 0, skipped_mlp=(),
              layers=None, channel_scales=None, lora=None) -> list[float]:
    """Per layer, unbiased MMD^2 between the output hidden states of the original and the modified model.

    Tokens: all positions of `rows`, of which the same `max_tokens` (seeded choice, `sample_positions`) are used
    on both sides; bandwidth: the median heuristic, per layer. `layers` picks some layers (default: all). The
    handle is left reset. (drift.layer_drift gives the same values together with a PCA view of the states.)
    """
    wanted = layer_indices(hs, layers)
    if max_tokens < 4:
        raise MetricError(f"max_tokens = {max_tokens}: MMD needs at least 4 tokens")
    total = row_tokens(rows)
    if total < 4:
        raise MetricError(f"layer_mmd needs at least 4 tokens; the rows hold {total}")
    idx = sample_positions(total, max_tokens, seed)
    hs.reset()
    orig = sampled_states(hs, rows, wanted, idx)
    with hs.applied(skipped, scales, skipped_mlp, channel_scales, lora):
        mod = sampled_states(hs, rows, wanted, idx)
    return [mmd2(orig[i], mod[i]) for i in wanted]


_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _clean(num: str) -> str:
    return num.replace(",", "").replace("$", "").rstrip(".")


def extract_strict(text: str) -> str | None:
    """GSM8K strict-match: the number after '#### ' (lm-evaluation-harness 'strict-match' filter)."""
    m = _STRICT.search(text)
    return _clean(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
    """GSM8K flexible-extract: the last number in the text (lm-evaluation-harness 'flexible-extract' filter)."""
    found = _FLEX.findall(text)
    if not found:
        return None
    last = found[-1]
    return _clean(last[0] or last[1]) or None
