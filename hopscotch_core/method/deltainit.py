"""A closed-form start for the low-rank deltas: what a removed attention block added, fitted by least squares.

    state, fits = lsq_deltas(hs, rows, blocks=[6, 7, 25], rank=4)   # hs: a handle with lora rank 4
    hs.set_lora(state)                                             # then train as usual (training.train_scales)

When attention block l is skipped, the residual stream loses its output a_l = Attention(Norm(x_in)) at every
position. The nearest place a foldable delta can put it back is the MLP just before it: layer l-1's `down_proj`
writes into the same residual stream that attention l would have read and added to, so

    down_proj_{l-1}:  W h  ->  W h + B A h        with  B A h ~ a_l

(the idea of ReplaceMe, which folds a fitted linear map into the preceding MLP's down-projection, and of Ghosted
Layers, arXiv 2605.15491, which fits the map standing in for a removed block in closed form on calibration
activations). Here the map is fitted on the original model's activations over the training rows (every position,
prompt and answer): h = the input of layer l-1's down_proj, a = what attention l added. The fit is ridge least
squares, W_ols = C_ah (C_hh + lambda I)^-1, reduced to the run's rank by reduced-rank regression (the rank-r map
that best predicts a in the data's own metric: project W_ols on the top-r eigenvectors U_r of its fitted values'
covariance W_ols C_hh W_ols^T), then split evenly into B = U_r P S^1/2 and A = S^1/2 Q^T (P S Q^T the SVD of
U_r^T W_ols), so both factors start at the same scale for Adam. Every other delta keeps its start (B = 0).

The deltas are the handle's ordinary low-rank deltas: they train, save and fold into the weights exactly as the
zero-start ones do; only their first value differs. A block whose previous layer is not there (layer 0) keeps the
zero start. Cost: one forward of the original model over the rows, and per skipped block a (in x in) float64
accumulator (in = the MLP's intermediate width: 1,536 on SmolLM2-135M, 14,336 on an 8B Llama: 1.6 GB each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import HopscotchError
from .data import Row, forward_rows

Progress = Callable[[int, int, dict], None]
DELTA_INITS = ("zero", "lsq")
RIDGE = 1e-4  # lambda = RIDGE x the mean eigenvalue of C_hh: keeps the solve stable where h is nearly degenerate


def lsq_targets(blocks: Sequence[int]) -> dict[int, int]:
    """{skipped block l: the layer whose down_proj delta stands in for it (l - 1)}; block 0 has none."""
    return {b: b - 1 for b in sorted(set(blocks)) if b >= 1}


def _check(hs, rank: int) -> None:
    fam = hs.family.layer
    if not rank:
        raise HopscotchError("the least-squares start needs low-rank deltas (lora rank > 0)")
    if fam.mlp_delta is None or fam.mlp_out != (fam.mlp_delta, "linear"):
        raise HopscotchError(f"the least-squares start for the deltas needs an MLP that ends in its delta's "
                             f"projection; '{hs.family.name}' models do not: use --delta-init zero")


def lsq_deltas(hs, rows: Sequence[Row], blocks: Sequence[int], rank: int | None = None, ridge: float = RIDGE,
               on_progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(lora state, fits): the handle's current deltas with each skipped block's stand-in (lsq_targets) replaced
    by the rank-`rank` least-squares fit described in the module docstring, and per block a record {"block",
    "layer", "tokens", "explained"} (explained: the share of the removed output's sum of squares the rank-r map
    reproduces on these rows). The handle must hold deltas at `rank` (hs.set_lora_rank); nothing is applied
    while the original's activations are read."""
    rank = hs.lora_rank if rank is None else rank
    _check(hs, rank)
    if rank != hs.lora_rank:
        raise HopscotchError(f"the handle holds rank-{hs.lora_rank} deltas, not rank {rank}")
    pairs = lsq_targets(blocks)
    state = hs.lora_state()
    if not pairs:
        return state, []
    layers = hs.family.layers
    mults = {b: float(getattr(layers[b - 1], "residual_multiplier", 1.0)) for b in pairs}  # Granite's branch factor
    acc: dict[int, dict[str, torch.Tensor | int]] = {}
    held: dict[int, torch.Tensor] = {}  # layer -> (T, in) the input of its down_proj in this forward

    def keep(layer: int):
        def hook(_mod, args, _out):
            held[layer] = args[0].detach().reshape(-1, args[0].shape[-1])
        return hook

    def probe(idx: int, x: torch.Tensor, x1: torch.Tensor, _out: torch.Tensor) -> None:
        if idx not in pairs:
            return
        h = held.pop(idx - 1).double()                                             # (T, in)
        a = (x1 - x).detach().reshape(-1, x.shape[-1]).double() / mults[idx]      # (T, out) what attention added
        if h.device.type == "mps":  # no float64 there
            h, a = h.cpu(), a.cpu()
        st = acc.setdefault(idx, {"hh": torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64, device=h.device),
                                  "ah": torch.zeros(a.shape[1], h.shape[1], dtype=torch.float64, device=h.device),
                                  "aa": 0.0, "n": 0})
        st["hh"] += h.T @ h
        st["ah"] += a.T @ h
        st["aa"] += float((a * a).sum())
        st["n"] += h.shape[0]

    path = hs.family.layer.mlp_delta
    handles = [layers[b - 1].get_submodule(path).register_forward_hook(keep(b - 1)) for b in pairs]
    try:
        with hs.in_thread(), hs.probe(probe):  # the original model: nothing skipped, all ones, no deltas
            for n, row in enumerate(rows):
                forward_rows(hs.model, [row])
                held.clear()
                if on_progress is not None:
                    on_progress(n + 1, len(rows), {"stage": "delta-init"})
    finally:
        for h in handles:
            h.remove()
    fits = []
    for b, st in sorted(acc.items()):
        a_mat, b_mat, explained = _reduced_rank(st["hh"], st["ah"], float(st["aa"]), rank, ridge)
        state[f"{b - 1}.mlp.A"], state[f"{b - 1}.mlp.B"] = a_mat, b_mat
        fits.append({"block": b, "layer": b - 1, "tokens": int(st["n"]), "explained": explained})
    return state, fits


def _reduced_rank(hh: torch.Tensor, ah: torch.Tensor, aa: float, rank: int,
                  ridge: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A (r, in), B (out, r), explained share) of the rank-r ridge regression of a on h from the sums
    hh = sum h h^T, ah = sum a h^T, aa = sum |a|^2."""
    d = hh.shape[0]
    lam = ridge * float(torch.trace(hh)) / d
    w = torch.linalg.solve(hh + lam * torch.eye(d, dtype=hh.dtype, device=hh.device), ah.T).T   # (out, in) W_ols
    fitted = w @ hh @ w.T                                                                       # (out, out)
    _, vecs = torch.linalg.eigh(fitted)
    u = vecs[:, -rank:]                                                                         # (out, r) top r
    m = u.T @ w                                                                                 # (r, in)
    p, s, qt = torch.linalg.svd(m, full_matrices=False)
    root = s.clamp_min(0).sqrt()
    b_mat, a_mat = (u @ p) * root, root[:, None] * qt                                           # B A = U U^T W
    wr = b_mat @ a_mat
    resid = aa - 2 * float((wr * ah).sum()) + float((wr @ hh * wr).sum())
    explained = 1.0 - resid / aa if aa > 0 else 0.0
    return a_mat.float().cpu(), b_mat.float().cpu(), explained
