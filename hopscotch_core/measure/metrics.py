"""Measurements on models and hidden states (pure tensor math; no UI).

    from hopscotch_core.measure import metrics
    metrics.mmd2(x, y)                  # unbiased MMD^2, RBF kernel, median-heuristic bandwidth
    metrics.singular_values(model)      # DataFrame: layer, matrix, sigma_max (one row per weight matrix)
    metrics.layer_mmd(hs, rows, [3, 7])             # per layer, MMD^2 of the hidden states, original vs skipped
    metrics.layer_mmds(hs, rows, {"a": {...}, ...}) # the same for several variants, the original's pass shared
    metrics.compare(hs, rows, variants, mmd_tokens=512)  # NLL/KL/agreement, + layer_mmd from the same passes

Hidden states for layer MMD are taken by forward hooks on the decoder layers (StateCapture) that keep only the
chosen token positions (n x C per layer, whatever the length). layer_mmd / layer_mmds run one pass per model over
the rows holding chosen positions, each cut after its last one, several rows per forward (up to `batch_tokens`
padded tokens on an accelerator, the padding a sequence of its own that the packed-sequence mask keeps apart; on
CPU one row per forward, where batching gained nothing); compare takes them from its own teacher-forced passes at
no extra forward. sampled_states is the per-row pass with per-layer callbacks (drift's progress and stop).

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
from ..errors import MetricError
from ..engine.loading import read_derived, weights_stamp, write_derived
from .cached import cached_singular_values  # noqa: F401  (re-exported: read without torch there)


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


def compare(hs, rows, variants: dict[str, dict], per_example: bool = False, mmd_tokens: int | None = None,
            mmd_seed: int = 0) -> dict[str, dict]:
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

    With `mmd_tokens`, each variant's entry also holds `layer_mmd`: layer_mmd's per-layer values for the same
    `mmd_tokens` and `mmd_seed` (every layer), from the hidden states of these same passes (forward hooks keep
    the chosen positions), so they cost no forward of their own.
    """
    zero = {"nll": 0.0, "kl": 0.0, "agree": 0.0}
    tot = {name: dict(zero) for name in ["original", *variants]}
    n_ex = 1 + max((max(r.example_ids) for r in rows if r.example_ids), default=-1) if per_example else 0
    per = {name: {k: torch.zeros(n_ex, dtype=torch.float64) for k in zero} for name in tot}
    count = torch.zeros(n_ex, dtype=torch.float64)
    n = 0
    wanted: list[int] = []
    where: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row -> (its chosen columns, their sample slots)
    acc: dict[str, SampledStates] = {}
    if mmd_tokens is not None:
        wanted = layer_indices(hs, None)
        idx = mmd_positions(rows, mmd_tokens, mmd_seed)
        where = {r: (cols, slots) for r, cols, slots in locate(rows, idx)}
        acc = {name: SampledStates(wanted, len(idx)) for name in tot}
    capture = StateCapture(hs.family.layers, wanted)

    def logits(name: str, r: int, row) -> torch.Tensor:  # (N, V), keeping the chosen states of this pass
        sel = where.get(r)
        if sel is not None:
            capture.select(torch.zeros(len(sel[0]), dtype=torch.long), sel[0])
        lg = row_logits(hs.model, row)
        if sel is not None:
            acc[name].add(capture.take(), sel[1])
        return lg

    with torch.no_grad(), capture:
        for r, row in enumerate(rows):
            hs.reset()
            lo = logits("original", r, row)
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
                lm = logits(name, r, row)
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
    if acc:
        orig = acc["original"].states()
        for name in variants:
            mod = acc[name].states()
            out[name]["layer_mmd"] = [mmd2(orig[i], mod[i]) for i in wanted]
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


def locate(rows, positions: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Where `positions` (indices into all tokens of `rows` laid end to end) fall: per row holding some of them,
    (row index, its local columns ascending (n_r,), their indices into `positions` (n_r,))."""
    positions = torch.as_tensor(positions, dtype=torch.long).cpu()
    order = torch.argsort(positions)
    ordered = positions[order]
    if len(ordered) and (int(ordered[0]) < 0 or int(ordered[-1]) >= row_tokens(rows)):
        bad = int(ordered[0]) if int(ordered[0]) < 0 else int(ordered[-1])
        raise MetricError(f"position {bad} is outside the rows ({row_tokens(rows)} tokens)")
    out, off = [], 0
    for r, row in enumerate(rows):
        t = int(row.input_ids.shape[1])
        lo, hi = (int(torch.searchsorted(ordered, v)) for v in (off, off + t))
        if hi > lo:
            out.append((r, ordered[lo:hi] - off, order[lo:hi]))
        off += t
    return out


class StateCapture:
    """Forward hooks on the decoder layers that keep, per layer in `layers`, the output hidden states at chosen
    token positions of each forward pass (nothing else is kept: memory n x C per layer and pass).

        with StateCapture(hs.family.layers, layers) as cap:
            cap.select(b, t)                 # (n,) batch rows and (n,) columns to keep in the next forward
            model(...)
            got = cap.take()                 # {layer: (n, C) float32 CPU}, in the order of (b, t)
    """

    def __init__(self, decoder_layers: Sequence[nn.Module], layers: Sequence[int]):
        self.layers = [int(i) for i in layers]
        self._blocks = [decoder_layers[i] for i in self.layers]
        self._sel: tuple[torch.Tensor, torch.Tensor] | None = None
        self._got: dict[int, torch.Tensor] = {}
        self._hooks: list = []

    def __enter__(self) -> "StateCapture":
        for i, block in zip(self.layers, self._blocks):
            self._hooks.append(block.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _hook(self, i: int):
        def hook(module, args, output) -> None:
            if self._sel is None:
                return
            h = output[0] if isinstance(output, tuple) else output  # (B, T, C)
            b, t = (s.to(h.device) for s in self._sel)
            self._got[i] = h.detach()[b, t].float().cpu()  # (n, C)
        return hook

    def select(self, b: torch.Tensor, t: torch.Tensor) -> None:
        self._sel = (torch.as_tensor(b, dtype=torch.long), torch.as_tensor(t, dtype=torch.long))
        self._got = {}

    def take(self) -> dict[int, torch.Tensor]:
        got, self._sel, self._got = self._got, None, {}
        missing = [i for i in self.layers if i not in got]
        if missing:
            raise MetricError(f"layers {missing} did not run in the forward pass")
        return got


class SampledStates:
    """Per layer, the hidden states at `positions` of `rows`, filled piece by piece (a row or a batch of rows at
    a time) and read back in the order of `positions`: {layer: (n, C)}."""

    def __init__(self, layers: Sequence[int], n: int):
        self.layers = list(layers)
        self._n = n
        self._parts: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
        self._where: list[torch.Tensor] = []

    def add(self, got: dict[int, torch.Tensor], where: torch.Tensor) -> None:
        """`got` {layer: (n_part, C)}: the states at the positions whose indices into `positions` are `where`."""
        for i in self.layers:
            self._parts[i].append(got[i])
        self._where.append(where)

    def states(self) -> dict[int, torch.Tensor]:
        where = torch.cat(self._where)
        if len(where) != self._n:
            raise MetricError(f"{len(where)} of {self._n} positions captured")
        out = {}
        for i in self.layers:
            cat = torch.cat(self._parts[i])  # (n, C) in capture order
            out[i] = torch.empty_like(cat)
            out[i][where] = cat  # back to the order of `positions`
        return out


def _batches(rows, located, batch_tokens: int) -> list[list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """`located` (locate) grouped into forward batches of at most `batch_tokens` padded tokens (a row alone may
    exceed it). A row is cut after its last chosen column (causal: later tokens change nothing before them)."""
    out: list[list] = []
    width = 0
    for item in sorted(located, key=lambda x: -int(x[1][-1])):  # longest first: little padding
        t = int(item[1][-1]) + 1
        if out and (len(out[-1]) + 1) * max(width, t) <= batch_tokens:
            out[-1].append(item)
            width = max(width, t)
        else:
            out.append([item])
            width = t
    return out


def _forward_batch(model, rows, batch: list[tuple[int, torch.Tensor, torch.Tensor]], cap: StateCapture) -> dict:
    """One forward of the rows in `batch`, each cut after its last chosen column and right-padded with a dummy
    sequence of its own (position ids from 0 again, so the packed-sequence mask keeps it apart); the captured
    states at the chosen columns, in the order of the batch's items."""
    cut = [int(cols[-1]) + 1 for _, cols, _ in batch]
    width = max(cut)
    ids = torch.zeros(len(batch), width, dtype=torch.long)   # (B, T)
    pos = torch.arange(width).repeat(len(batch), 1)          # (B, T); padding: its own sequence 0, 1, ...
    for b, ((r, _, _), n) in enumerate(zip(batch, cut)):
        ids[b, :n] = rows[r].input_ids[0, :n]
        pos[b, :n] = rows[r].position_ids[0, :n]
        pos[b, n:] = torch.arange(width - n)
    bsel = torch.cat([torch.full((len(cols),), b, dtype=torch.long) for b, (_, cols, _) in enumerate(batch)])
    tsel = torch.cat([cols for _, cols, _ in batch])
    cap.select(bsel, tsel)
    dev = model.device
    with torch.no_grad():
        model(input_ids=ids.to(dev), position_ids=pos.to(dev), use_cache=False, logits_to_keep=1)
    return cap.take()


def batched_states(hs, rows, layers: Sequence[int], positions: torch.Tensor,
                   batch_tokens: int | None = None) -> dict[int, torch.Tensor]:
    """`sampled_states` without its callbacks, cheaper: rows holding none of `positions` are not run, each row is
    cut after its last chosen position, and rows are run together in batches of at most `batch_tokens` padded
    tokens, with forward hooks keeping only the chosen positions. {layer: (n, C) float32 CPU}, in the order of
    `positions`; equal to sampled_states' values up to float rounding (other matrix shapes). `batch_tokens`
    None: 4096 on an accelerator, one row per forward on CPU (measured on the embedded model, 1 thread: 4096-token
    batches gained nothing there, while cutting rows saved ~10%)."""
    if batch_tokens is None:
        batch_tokens = 1 if hs.model.device.type == "cpu" else 4096
    located = locate(rows, positions)
    acc = SampledStates(layers, len(positions))
    with StateCapture(hs.family.layers, layers) as cap:
        for batch in _batches(rows, located, batch_tokens):
            got = _forward_batch(hs.model, rows, batch, cap)
            acc.add(got, torch.cat([where for _, _, where in batch]))
    return acc.states()


def mmd_positions(rows, max_tokens: int, seed: int = 0) -> torch.Tensor:
    """layer_mmd's tokens: the checks, then `max_tokens` of all positions of `rows` (sample_positions, `seed`)."""
    if max_tokens < 4:
        raise MetricError(f"max_tokens = {max_tokens}: MMD needs at least 4 tokens")
    total = row_tokens(rows)
    if total < 4:
        raise MetricError(f"layer_mmd needs at least 4 tokens; the rows hold {total}")
    return sample_positions(total, max_tokens, seed)


def layer_mmds(hs, rows, variants: dict[str, dict], max_tokens: int = 512, seed: int = 0, layers=None,
               batch_tokens: int | None = None, should_stop: Callable[[], bool] | None = None
               ) -> dict[str, list[float]] | None:
    """`layer_mmd` of several variants ({name: configure() arguments, as in `compare`}): the original's states
    are taken once and shared, then one pass per variant (batched_states). {name: per-layer MMD^2}; None when
    `should_stop()` turned true between passes. The handle is left reset."""
    wanted = layer_indices(hs, layers)
    idx = mmd_positions(rows, max_tokens, seed)
    hs.reset()
    orig = batched_states(hs, rows, wanted, idx, batch_tokens)
    out = {}
    for name, v in variants.items():
        if should_stop is not None and should_stop():
            return None
        with hs.applied(v.get("skipped", ()), v.get("scales"), v.get("skipped_mlp", ()), v.get("channel_scales"),
                        v.get("lora")):
            mod = batched_states(hs, rows, wanted, idx, batch_tokens)
        out[name] = [mmd2(orig[i], mod[i]) for i in wanted]
    return out


def layer_mmd(hs, rows, skipped, scales=None, max_tokens: int = 512, seed: int = 0, skipped_mlp=(),
              layers=None, channel_scales=None, lora=None, batch_tokens: int | None = None) -> list[float]:
    """Per layer, unbiased MMD^2 between the output hidden states of the original and the modified model.

    Tokens: all positions of `rows`, of which the same `max_tokens` (seeded choice, `sample_positions`) are used
    on both sides; bandwidth: the median heuristic, per layer. `layers` picks some layers (default: all). Two
    batched passes (batched_states); for several variants, `layer_mmds` shares the original's. The handle is left
    reset. (drift.layer_drift gives the same values, up to float rounding, with a PCA view of the states.)
    """
    return layer_mmds(hs, rows, {"m": {"skipped": skipped, "scales": scales, "skipped_mlp": skipped_mlp,
                                       "channel_scales": channel_scales, "lora": lora}},
                      max_tokens, seed, layers, batch_tokens)["m"]


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
