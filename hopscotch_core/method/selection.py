"""Which attention blocks to skip: the paper's iterative greedy search, a fast shortlist mode, and baselines.

    sel = greedy_select(hs, rows, SelectConfig(k=4, mode="paper"))     # sel.selected: blocks in removal order
    sel = greedy_select(hs, rows, SelectConfig(k=4, mode="fast", shortlist=4))
    blocks = baseline_blocks("attn-bi", hs, rows, k=4)

Paper mode (Eyceoz et al. 2025): each round, every remaining block is scored by one epoch of scale training at
lr 1e-2 with it (and the blocks already removed) skipped, scalars starting from ones; the lowest mean loss is
removed. Fast mode first ranks all remaining blocks cheaply, then scores only the `shortlist` best the paper's
way. The cheap rank is, with `shortlist_by="bi"` (default), the attention block influence 1 - cos(x, x1) measured
with the blocks removed so far skipped (one forward pass per round), or with `shortlist_by="loss"` the loss with
the candidate skipped and no training (one forward pass per candidate).

Every score is a record {"round", "candidate", "kind": "paper" | "shortlist", "loss", "removed"}; `on_score`
receives each one as it is made (the run store appends it to disk), and passing the records back as `done`
resumes a search exactly where it stopped, with the same result.

Baselines (same data, recorded the same way by the pipeline):
  attn-bi      attention block influence, 1 - cos(x, x1) per layer (ShortGPT's metric on the attention sublayer)
  shortgpt     whole layers, by block influence 1 - cos(x, out) (Men et al., 2024); attention and MLP removed
  random       k blocks drawn with the seed
  one-round    the paper's round-1 scores, k lowest at once ("full greedy", the paper's Table 9)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import Row, dataset_loss, forward_rows
from .runs import DONE, STOPPED
from ..errors import SelectionError  # noqa: F401 - defined in errors; importable from here as before
from ..engine.scaling import Hopscotch
from .settings import BASELINES, MODES, RunSettings, check_k, check_selection  # noqa: F401 - one list of each
from .training import Objective, dataset_objective, score_candidate

Progress = Callable[[int, int, dict], None]

_RUN = RunSettings()  # the defaults come from the run settings' schema (method/settings.py), the one place


@dataclass
class SelectConfig:
    k: int
    mode: str = _RUN.mode
    shortlist: int = _RUN.shortlist
    shortlist_by: str = _RUN.shortlist_by  # fast mode: "bi" (block influence) or "loss" (untrained skipped loss)
    score_lr: float = _RUN.score_lr
    threshold: float | None = _RUN.threshold  # stop early once the best loss of a round exceeds this
    seed: int = _RUN.seed
    objective: Objective | None = None  # what a candidate's score minimises (None: ce, the paper's)


@dataclass
class Selection:
    selected: list[int] = field(default_factory=list)   # in removal order
    rounds: list[dict] = field(default_factory=list)    # per round: best candidate and loss
    status: str = DONE                                  # DONE | STOPPED | "threshold" | "given"


def check_config(cfg: SelectConfig, num_layers: int) -> None:
    """Refuse a selection this model cannot make (the run settings' check, settings.check_selection)."""
    check_selection(cfg.k, cfg.mode, cfg.shortlist, cfg.shortlist_by, num_layers)


def skipped_loss(hs: Hopscotch, rows: Sequence[Row], skipped: Sequence[int],
                 objective: Objective | None = None) -> float:
    """Held-out style loss (the objective, default ce) with `skipped` attention blocks and all-ones scalars
    (forward only)."""
    with hs.applied(skipped):
        if objective is None or objective.name == "ce":
            return dataset_loss(hs.model, rows)
        return dataset_objective(hs, rows, objective)


def greedy_select(
    hs: Hopscotch,
    rows: Sequence[Row],
    cfg: SelectConfig,
    done: Sequence[dict] = (),
    on_score: Callable[[dict], None] | None = None,
    on_progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    group=None,
) -> Selection:
    """Iterative greedy selection of cfg.k attention blocks (see module docstring).

    With a process `group` of N ranks (distributed.Group), each round's candidates still to score are dealt over
    the ranks (candidate j of the round's list on rank j % N, N at a time), the scores are gathered on every rank
    and every rank makes the same choice; `on_score` (the run store, rank 0 only) gets the records in candidate
    order, as in one process.
    """
    n = hs.num_layers
    check_config(cfg, n)
    known = {(r["round"], r["kind"], r["candidate"]): float(r["loss"]) for r in done}
    sel = Selection()
    hs.reset()
    work_total = cfg.k * (min(cfg.shortlist, n) if cfg.mode == "fast" else n)
    work = 0

    def record(rnd: int, kind: str, cand: int, loss: float) -> None:
        known[(rnd, kind, cand)] = float(loss)
        if on_score is not None:
            on_score({"round": rnd, "candidate": cand, "kind": kind, "loss": float(loss),
                      "removed": list(sel.selected)})

    def progress(rnd: int, cand: int) -> None:
        nonlocal work
        work += 1
        if on_progress is not None:
            on_progress(work, work_total, {"stage": "select", "round": rnd, "candidate": cand,
                                           "loss": known[(rnd, "paper", cand)], "selected": list(sel.selected)})

    def score_all(rnd: int, kind: str, cands: list[int], fn: Callable[[int], float]) -> dict[int, float] | None:
        """Scores of `cands` (known ones reused, the rest computed, spread over the ranks); None when stopped."""
        todo = [c for c in cands if (rnd, kind, c) not in known]
        if kind == "paper":
            for c in cands:
                if (rnd, kind, c) in known:
                    progress(rnd, c)

        def got(c: int, loss: float) -> None:
            record(rnd, kind, c, loss)
            if kind == "paper":
                progress(rnd, c)

        if group is None or group.world == 1:
            for c in todo:
                if should_stop is not None and should_stop():
                    return None
                got(c, fn(c))
        elif not group.shard_map(todo, fn, got, should_stop):
            return None
        return {c: known[(rnd, kind, c)] for c in cands}

    for rnd in range(cfg.k):
        remaining = [i for i in range(n) if i not in sel.selected]
        candidates = remaining
        if cfg.mode == "fast":
            if cfg.shortlist_by == "bi":
                def metric(c: int, cache: dict = {}, skipped: tuple = tuple(sel.selected)) -> float:  # noqa: B006
                    if "bi" not in cache:  # one forward per round, on the ranks that score a candidate
                        cache["bi"] = block_influence(hs, rows, skipped=list(skipped))[0]
                    return cache["bi"][c]
            else:
                def metric(c: int) -> float:
                    return skipped_loss(hs, rows, [*sel.selected, c], cfg.objective)
            quick = score_all(rnd, "shortlist", remaining, metric)
            if quick is None:
                sel.status = STOPPED
                return sel
            candidates = sorted(remaining, key=lambda c: (quick[c], c))[:cfg.shortlist]
        losses = score_all(rnd, "paper", candidates, lambda c, rnd=rnd: score_candidate(
            hs, rows, sel.selected, c, lr=cfg.score_lr, seed=cfg.seed + rnd, objective=cfg.objective))
        if losses is None:
            sel.status = STOPPED
            return sel
        best = min(candidates, key=lambda c: (losses[c], c))
        if cfg.threshold is not None and losses[best] > cfg.threshold:
            sel.status = "threshold"
            break
        sel.selected.append(best)
        sel.rounds.append({"round": rnd, "removed": best, "loss": losses[best]})
    hs.reset()
    return sel


# ------------------------------------------------------------------------------------------------- elbow
KNEE_MIN_ROUNDS = 4


def suggest_k(rounds, sensitivity: float = 1.0) -> tuple[int | None, str]:
    """The knee of the elbow curve (loss of the best candidate vs blocks removed) by Kneedle (Satopää, Albrecht,
    Irwin and Raghavan, 2011): (suggested k, a one-line reason), or (None, why not).

    `rounds` has columns n_removed and loss (RunView.rounds()). The rule, for a loss that grows with k and grows
    faster later (a convex, increasing curve): scale k and loss to [0, 1] (first to last round; loss min to max),
    take the difference curve d = k_norm - loss_norm (how far the curve lies below the straight line from its
    first to its last point), and find its local maxima. A local maximum at k_i becomes a knee when d falls below
    d_i - sensitivity * mean(step of k_norm) before the next local maximum; the first knee wins (the kneed
    package's default). Curves with fewer than KNEE_MIN_ROUNDS rounds, flat curves, curves that rise fastest at
    the start and curves that rise about evenly give None: there is no bend to point at.
    """
    n = 0 if rounds is None else len(rounds)
    if n < KNEE_MIN_ROUNDS:
        return None, (f"no suggested k: {n} round{'s' if n != 1 else ''} so far; the knee rule (Kneedle) needs at "
                      f"least {KNEE_MIN_ROUNDS}")
    df = rounds.sort_values("n_removed")
    x = np.asarray(df["n_removed"], dtype=float)
    y = np.asarray(df["loss"], dtype=float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or x[-1] <= x[0]:
        return None, "no suggested k: the curve has missing or non-finite values"
    if y.max() - y.min() <= 1e-12 * max(1.0, abs(y.max())):
        return None, "no suggested k: the loss does not change with k"
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y.min()) / (y.max() - y.min())
    d = xn - yn  # (n,) the curve's distance below its chord (convex, increasing)
    thr_step = sensitivity * float(np.mean(np.diff(xn)))
    peaks = [i for i in range(1, n - 1) if d[i] >= d[i - 1] and d[i] > d[i + 1]]
    knee = None
    for a, i in enumerate(peaks):
        nxt = peaks[a + 1] if a + 1 < len(peaks) else n
        if any(d[j] < d[i] - thr_step for j in range(i + 1, min(nxt + 1, n))):
            knee = i
            break
    if knee is None:
        shape = "rises fastest at the start" if d[1:-1].mean() < -0.05 else "rises about evenly"
        return None, f"no suggested k: the loss {shape}, with no bend sharp enough for the knee rule (Kneedle)"
    k = int(x[knee])
    before = (y[knee] - y[0]) / (x[knee] - x[0])
    after = (y[-1] - y[knee]) / (x[-1] - x[knee])
    return k, (f"suggested k = {k}, the knee of the elbow curve (Kneedle): from k = {int(x[0])} to {k} the loss "
               f"rises {before:.3g} per removed block, after k = {k} {after:.3g} per block")


# ------------------------------------------------------------------------------------------------- baselines
def block_influence(hs: Hopscotch, rows: Sequence[Row], skipped: Sequence[int] = ()
                    ) -> tuple[list[float], list[float]]:
    """Per layer, token-mean (1 - cos(x, x1)) and (1 - cos(x, out)), with `skipped` blocks skipped (unscaled)."""
    n = hs.num_layers
    att = torch.zeros(n, dtype=torch.float64)
    lay = torch.zeros(n, dtype=torch.float64)

    def probe(i: int, x: torch.Tensor, x1: torch.Tensor, out: torch.Tensor) -> None:
        a, b, c = x[0].float(), x1[0].float(), out[0].float()  # (T, C)
        att[i] += (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum().item()
        lay[i] += (1 - torch.nn.functional.cosine_similarity(a, c, dim=-1)).sum().item()

    with hs.applied(skipped), hs.probe(probe):
        forward_rows(hs.model, rows)
    count = sum(row.input_ids.shape[1] for row in rows)
    return (att / count).tolist(), (lay / count).tolist()


def baseline_blocks(
    name: str, hs: Hopscotch, rows: Sequence[Row], k: int, seed: int = 0,
    round_one: dict[int, float] | None = None, score_lr: float = 1e-2,
    on_progress: Progress | None = None, objective: Objective | None = None, group=None,
) -> dict:
    """{"attention": [...], "mlp": [...], "scores": {...}} for baseline `name` (see module docstring)."""
    n = hs.num_layers
    check_k(k, n)
    if name in ("attn-bi", "shortgpt"):
        att, lay = block_influence(hs, rows)
        scores = att if name == "attn-bi" else lay
        blocks = sorted(range(n), key=lambda i: (scores[i], i))[:k]
        return {"attention": blocks, "mlp": blocks if name == "shortgpt" else [], "scores": scores}
    if name == "random":
        return {"attention": sorted(random.Random(seed).sample(range(n), k)), "mlp": [], "scores": None}
    if name == "one-round":
        scores = dict(round_one or {})

        def got(c: int, loss: float) -> None:
            scores[c] = loss
            if on_progress is not None:
                on_progress(len(scores), n, {"stage": "baseline one-round", "candidate": c})

        def one(c: int) -> float:
            return score_candidate(hs, rows, [], c, lr=score_lr, seed=seed, objective=objective)

        todo = [c for c in range(n) if c not in scores]
        if group is None or group.world == 1:
            for c in todo:
                got(c, one(c))
        else:  # spread over the ranks, as the paper rounds are
            group.shard_map(todo, one, got)
        blocks = sorted(range(n), key=lambda i: (scores[i], i))[:k]
        return {"attention": blocks, "mlp": [], "scores": [scores[i] for i in range(n)]}
    raise SelectionError(f"unknown baseline '{name}'; use any of {', '.join(BASELINES)}")
