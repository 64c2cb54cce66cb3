"""Hidden-state drift: where, layer by layer, a skipped model's hidden states leave the original's cloud (no UI).

    res = layer_drift(hs, rows, skipped=[4, 17], max_tokens=256)      # one pass per side, sampled positions
    res.mmd[j], res.drift[j]                  # per measured layer res.layers[j]: MMD^2 and drift (below)
    res.original[j], res.modified[j]          # (n, 2): the same n tokens projected on the original's top 2 PCs
    res.table()                               # DataFrame: layer, mmd2, drift, explained_1, explained_2
    res = prompt_drift(model, tok, prompts, skipped=[4, 17], lock=lock)  # the app's entry (shared model)
    fig = figures.drift(res, skipped=[4, 17])

Tokens: all positions of the packed rows except each sequence's first token (`drop_first`, below), of which
`max_tokens` are chosen at random with `seed` (metrics.sample_positions), the same positions on both sides; only those
positions' states are kept during the forward pass, so memory is n x C per layer and side whatever the prompt
length. The forward passes themselves are the cost: on a 2,000-token prompt they take seconds on a CPU, so progress
goes to `on_progress(step, total, info)` after every layer of every pass, `should_stop()` abandons the
measurement (the result is then None), and `reuse=` a previous result skips the original model's pass when the
tokens, positions, layers and weights are the same (changing only the skip set costs one pass, not two).
Measured on SmolLM2-135M (30 layers, fp32, CPU, 2 threads on a busy 2-core machine), max_tokens 256: the five
preset prompts (227 tokens) ~2 s (0.7 s per pass, 0.5 s MMD + PCA for 30 layers); a 1,990-token prompt ~10 s
(3.5 s per pass, 1-2 s MMD + PCA), ~5 s with `reuse`; progress at least every 0.5 s.

Per measured layer l, with O (n, C) the original's and M (n, C) the modified model's output states at the same
tokens:
  mmd        unbiased MMD^2 of O and M (metrics.mmd2: RBF kernel, median-heuristic bandwidth); with
             drop_first=False exactly metrics.layer_mmd's values for the same max_tokens and seed
  PCA        sklearn PCA(n_components=2) fitted on O alone (centred on O's mean; ARPACK, exact to float64
             rounding, seeded; LAPACK when a side has 2 or fewer tokens/dimensions); `original`
             and `modified` are O and M projected on it: (X - mean(O)) @ V (C, 2); `explained` its explained
             variance ratio (of O's total variance)
  drift      mean_k |P(M_k) - P(O_k)| / sqrt(mean_k |P(O_k)|^2): how far each token moved in the PCA plane, on
             average, in units of the original cloud's RMS radius in that plane (0: no change; 1: tokens moved
             by about the size of the cloud). It sees only what the plane shows; MMD sees all C dimensions.

Why `drop_first` (default on): a sequence's first token is the attention sink, whose state carries "massive
activations" (Sun et al., 2024). Measured on SmolLM2-135M with the five preset prompts: the <|im_start|> token at
position 0 has 100-170x the median state norm in layers 11-20 (identical in every prompt); kept in, it alone is
PC1 (explained variance 0.999) and every other token collapses to a dot.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.priority import PriorityGate, gate
from ..measure import metrics
from .compare import PRESET_PROMPTS, _borrowed, prompt_rows

Progress = Callable[[int, int, dict], None]


@dataclass
class Drift:
    """Per measured layer (aligned with `layers`): MMD^2, PCA projections and drift; see the module docstring."""

    layers: list[int]                 # measured layers, in the order of every list below
    skipped: list[int]                # attention blocks skipped in the modified model
    positions: np.ndarray             # (n,) token positions used (rows laid end to end), same on both sides
    total_tokens: int                 # all token positions of the rows
    dropped: int                      # of them left out before sampling (first tokens, drop_first)
    mmd: list[float]                  # unbiased MMD^2 per layer
    original: list[np.ndarray]        # per layer (n, 2) float64: original states on the original's PC1, PC2
    modified: list[np.ndarray]        # per layer (n, 2) float64: modified states on the same axes
    explained: list[np.ndarray]       # per layer (2,): explained variance ratio of PC1, PC2 (original)
    drift: list[float]                # per layer, see module docstring
    seconds: dict[str, float] = field(default_factory=dict)   # original / modified / analysis wall time
    key: tuple = ()                   # what the original states depend on (reuse=)
    original_states: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # (n, C) per layer

    @property
    def tokens(self) -> int:
        """Number of token positions measured (on each side)."""
        return int(len(self.positions))

    def index(self, layer: int) -> int:
        """Position of `layer` in the per-layer lists."""
        return self.layers.index(int(layer))

    def table(self):
        """DataFrame, one row per measured layer: layer, skipped, mmd2, drift, explained_1, explained_2."""
        import pandas as pd

        sk = set(self.skipped)
        return pd.DataFrame({"layer": self.layers, "skipped": [i in sk for i in self.layers], "mmd2": self.mmd,
                             "drift": self.drift, "explained_1": [float(e[0]) for e in self.explained],
                             "explained_2": [float(e[1]) for e in self.explained]})


def project(orig: torch.Tensor | np.ndarray, mod: torch.Tensor | np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PCA (2 components) fitted on `orig` (n, C); returns (orig projected (n, 2), mod projected (n, 2),
    explained variance ratio (2,), drift). See the module docstring for the definitions."""
    from sklearn.decomposition import PCA

    o = np.asarray(orig, dtype=np.float64)
    m = np.asarray(mod, dtype=np.float64)
    k = min(2, *o.shape)
    solver = "arpack" if min(o.shape) > k else "full"  # ARPACK needs k < min(n, C); ~5x faster at n = 256
    pca = PCA(n_components=k, svd_solver=solver, random_state=0).fit(o)
    po, pm = pca.transform(o), pca.transform(m)  # (n, k)
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    if k < 2:  # fewer than 2 tokens or dimensions: pad the second axis with zeros
        po, pm = (np.pad(a, ((0, 0), (0, 2 - k))) for a in (po, pm))
        ratio = np.pad(ratio, (0, 2 - k))
    moved = float(np.linalg.norm(pm - po, axis=1).mean())
    radius = float(np.sqrt((po ** 2).sum(axis=1).mean()))
    drift = moved / radius if radius > 0 else (0.0 if moved == 0 else float("inf"))
    return po, pm, ratio, drift


def _fingerprint(hs, rows, positions: torch.Tensor, layers: Sequence[int]) -> tuple:
    """What the original model's sampled states depend on: model object and weight versions, tokens, positions,
    layers."""
    h = hashlib.sha1()
    for r in rows:
        for t in (r.input_ids, r.position_ids):
            h.update(t.detach().cpu().numpy().tobytes())
        h.update(b"|")
    model = hs.model
    version = sum(int(p._version) for p in model.parameters())
    p0 = next(model.parameters())
    return (id(model), version, str(p0.dtype), str(p0.device), h.hexdigest(), tuple(positions.tolist()),
            tuple(layers))


def layer_drift(hs, rows, skipped: Iterable[int], scales: torch.Tensor | None = None, max_tokens: int = 256,
                seed: int = 0, skipped_mlp: Iterable[int] = (), layers: Iterable[int] | None = None,
                on_progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                reuse: Drift | None = None, drop_first: bool = True, gate: PriorityGate | None = None,
                channel_scales: torch.Tensor | None = None, lora: dict[str, torch.Tensor] | None = None
                ) -> Drift | None:
    """Per layer, MMD^2 and the PCA drift view of the original vs the modified model (`skipped` attention blocks,
    optional [L, 4] `scales`, [L, 2, hidden] `channel_scales` and low-rank deltas `lora`: a run's whole trained
    state, as the generation beside it applies) on the same `max_tokens` sampled token positions of `rows` (module
    docstring).

    One forward pass per side; `reuse` (a previous result on the same rows, positions, layers and weights) skips
    the original's pass. Progress: `on_progress(step, total, {"stage": "original" | "modified" | "analysis",
    "layer": l, "tokens": n})`; when `should_stop()` turns true the measurement is abandoned and None returned.
    The handle is left reset. `hs` may also be a function returning a context manager that gives a handle (for a
    shared model, compare._borrowed: attached under the lock): each forward pass then borrows it anew, so the
    lock is let go between the two passes and during the analysis. With a priority `gate` (engine.priority),
    interactive work goes first: a pass that is running when it comes in is abandoned at its next layer (the lock
    let go within one layer's forward) and run again from its start once the interactive work has ended, and the
    analysis waits before each layer (for a shared model, prompt_drift passes the model's gate; each pass's
    borrow waits for its turn too). The result is the same as without interruptions.
    """
    borrow = hs if callable(hs) and not hasattr(hs, "num_layers") else (lambda: contextlib.nullcontext(hs))
    def stopped() -> bool:
        return should_stop is not None and should_stop()

    def yielded() -> bool:  # interactive work came in: the pass is abandoned at its next layer, the lock let go
        return gate is not None and gate.busy

    def stop_or_yield() -> bool:
        return stopped() or yielded()

    while True:
        with borrow() as hs:  # the original's pass (or the checks only, with reuse)
            return_early, state = _original_pass(hs, rows, max_tokens, seed, layers, on_progress, stop_or_yield,
                                                 reuse, drop_first)
        if not return_early or stopped() or not yielded():
            break
        gate.wait_turn(should_stop=should_stop)  # then the pass is run again from its start
    if return_early:
        return None
    wanted, idx, key, orig, total, eligible, tick, seconds = state
    skipped = sorted({int(b) for b in skipped})
    t1 = time.perf_counter()
    while True:
        mark = tick.done[0]
        with borrow() as hs, hs.applied(skipped, scales, skipped_mlp, channel_scales, lora):
            mod = metrics.sampled_states(hs, rows, wanted, idx, lambda i: tick("modified", i), stop_or_yield)
        if mod is not None or stopped() or not yielded():
            break
        tick.done[0] = mark  # the abandoned pass's progress is taken back
        gate.wait_turn(should_stop=should_stop)
    if mod is None:
        return None
    t2 = time.perf_counter()
    seconds["modified"] = t2 - t1
    res = Drift(layers=list(wanted), skipped=skipped, positions=idx.numpy().copy(), total_tokens=total,
                dropped=total - len(eligible), mmd=[],
                original=[], modified=[], explained=[], drift=[], key=key, original_states=orig)
    for i in wanted:
        if gate is not None:
            gate.wait_turn(should_stop=should_stop)
        if should_stop is not None and should_stop():
            return None
        res.mmd.append(metrics.mmd2(orig[i], mod[i]))
        po, pm, ratio, d = project(orig[i], mod[i])
        res.original.append(po)
        res.modified.append(pm)
        res.explained.append(ratio)
        res.drift.append(d)
        tick("analysis", i)
    seconds["analysis"] = time.perf_counter() - t2
    res.seconds = seconds
    return res


def _original_pass(hs, rows, max_tokens, seed, layers, on_progress, should_stop, reuse, drop_first):
    """layer_drift's checks, sampled positions, progress counter and the original model's states (or those of
    `reuse`): (stopped, (layers, positions, key, states, total, eligible, tick, seconds))."""
    wanted = metrics.layer_indices(hs, layers)
    if max_tokens < 4:
        raise metrics.MetricError(f"max_tokens = {max_tokens}: MMD needs at least 4 tokens")
    total = metrics.row_tokens(rows)
    pos = torch.cat([r.position_ids.reshape(-1).cpu() for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
    eligible = torch.nonzero(pos != 0).reshape(-1) if drop_first else torch.arange(total)  # (E,)
    if len(eligible) < 4:
        raise metrics.MetricError(f"the drift view needs at least 4 tokens; the rows hold {len(eligible)}"
                                  + (" besides each sequence's first token" if drop_first else ""))
    idx = eligible[metrics.sample_positions(len(eligible), max_tokens, seed)]  # (n,)
    n = len(idx)
    key = _fingerprint(hs, rows, idx, wanted)
    orig = reuse.original_states if reuse is not None and reuse.key == key and reuse.original_states else None

    # progress: one step per layer of each row run in each pass, then one per measured layer
    ordered = torch.sort(idx).values
    runs, off = 0, 0
    for r in rows:
        t = int(r.input_ids.shape[1])
        runs += int(((ordered >= off) & (ordered < off + t)).any())
        off += t
    per_pass = runs * hs.num_layers
    steps = (0 if orig is not None else per_pass) + per_pass + len(wanted)
    done = [0]

    def tick(stage: str, layer: int) -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], steps, {"stage": stage, "layer": layer, "tokens": n})

    tick.done = done  # layer_drift takes back the steps of a pass it abandoned for interactive work

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    hs.reset()
    if orig is None:
        orig = metrics.sampled_states(hs, rows, wanted, idx, lambda i: tick("original", i), should_stop)
        if orig is None:
            return True, None
        seconds["original"] = time.perf_counter() - t0
    else:
        seconds["original"] = 0.0
    return False, (wanted, idx, key, orig, total, eligible, tick, seconds)


def prompt_drift(model, tok, prompts: Sequence[str] = PRESET_PROMPTS, skipped: Iterable[int] = (),
                 scales: torch.Tensor | None = None, answers: Sequence = (), lock: threading.Lock | None = None,
                 max_tokens: int = 256, on_progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None, reuse: Drift | None = None, seed: int = 0,
                 chat: bool = True, drop_first: bool = True, channel_scales: torch.Tensor | None = None,
                 lora: dict[str, torch.Tensor] | None = None) -> Drift | None:
    """layer_drift on the tokens of a few prompts (chat template) or of the model's own answers (data.Answer:
    prompt + response tokens), on a possibly shared model: Hopscotch is attached only while `lock` is held and
    detached before it is let go (compare.prompt_mmd does the same). It is background work: each forward pass and
    each layer of the analysis waits while a generation on the same model runs (engine.priority), and then
    resumes. With drop_first=False the MMD values are compare.prompt_mmd's for the same max_tokens."""
    rows = prompt_rows(tok, prompts, chat=chat, answers=answers)
    return layer_drift(lambda: _borrowed(model, lock, True, background=True, should_stop=should_stop), rows, skipped,
                       scales, max_tokens=max_tokens, seed=seed, on_progress=on_progress, should_stop=should_stop,
                       reuse=reuse, drop_first=drop_first, gate=gate(model), channel_scales=channel_scales,
                       lora=lora)
