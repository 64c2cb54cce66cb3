"""Scale training (Adam on the float32 scalars only) and the paper's one-pass candidate scoring.

    hs = hc.attach(model); hs.skip([4, 17])
    result = train_scales(hs, train_rows, eval_rows, TrainConfig(lr=3e-3, epochs=3))
    loss = score_candidate(hs, rows, removed=[4], candidate=17)   # one epoch at lr 1e-2 from all ones

One row (several packed examples, see data.py) is one step; the step loss is the mean over its response tokens.
Epoch order is a seeded shuffle. A NaN/inf loss or scalar stops training and restores the last good scalars.
No UI here: progress goes to `on_progress(step, total, info)`, `should_stop()` ends a run cleanly after a step.

Objectives (`Objective`, for both scoring and training; token means over response positions):
    ce      cross-entropy on the model's own greedy answers (the paper's)
    kl      KL(original || modified) of the next-token distributions; the teacher is the same model with nothing
            skipped and all-ones scalars (hs.in_thread() under no_grad: no second copy of the model)
    ce+kl   ce + kl_weight * kl
The teacher comes either from a forward per step (exact KL, one extra no-grad forward per step), or from a
`TeacherCache`: the original model's top-k log-probs at every response position plus the log of the remaining
mass, computed once (saved in the run directory), so a step needs no teacher forward. With the cache the KL is
that of the two distributions coarsened to the k teacher tokens + one "rest" bucket (a lower bound of the exact
KL; the gap is the student's KL inside the rest, which carries the teacher's tail mass only). The granularity
follows the handle: hs.trainable() is [scales], [scales, channel_scales], and + [lora] (the flat low-rank
deltas, engine/lowrank.py) when the handle has a lora rank; the deltas take their own learning rate (lora_lr).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..constants import OBJECTIVES
from .data import Row, dataset_loss, example_spans, row_logits, row_loss, split_row
from ..engine.scaling import Hopscotch
from ..errors import HopscotchError
from .runs import DONE, STOPPED
from .settings import RunSettings

_RUN = RunSettings()  # the defaults come from the run settings' schema (method/settings.py), the one place

Progress = Callable[[int, int, dict], None]
TEACHER_TOP_K = 64


class TeacherCache:
    """The original model's top-k log-probs at every response position of each row (see module docstring).

    Per row i: idx[i] (N, k) token ids, logp[i] (N, k) their log-probs, tail[i] (N,) the log of the mass outside
    them. `targets` (all rows' targets, concatenated) identifies the rows it was made for."""

    def __init__(self, idx: list[torch.Tensor], logp: list[torch.Tensor], tail: list[torch.Tensor],
                 targets: torch.Tensor, top_k: int):
        self.idx, self.logp, self.tail, self.targets, self.top_k = idx, logp, tail, targets, top_k

    @staticmethod
    def _targets(rows: Sequence[Row]) -> torch.Tensor:
        return torch.cat([r.targets.reshape(-1) for r in rows]).to(torch.int64) if rows else torch.zeros(0)

    @classmethod
    def build(cls, hs: Hopscotch, rows: Sequence[Row], top_k: int = TEACHER_TOP_K,
              on_progress: Progress | None = None) -> "TeacherCache":
        idx, logp, tail = [], [], []
        with torch.no_grad(), hs.in_thread():  # the original model: nothing skipped, all ones
            for n, row in enumerate(rows):
                lp = torch.log_softmax(row_logits(hs.model, row), -1)  # (N, V)
                k = min(top_k, lp.shape[-1])
                top, where = lp.topk(k, -1)                            # (N, k)
                rest = lp.scatter(-1, where, float("-inf")).logsumexp(-1) if k < lp.shape[-1] else \
                    torch.full(lp.shape[:1], float("-inf"), device=lp.device)
                idx.append(where.to(torch.int32).cpu())
                logp.append(top.float().cpu())
                tail.append(rest.float().cpu())
                if on_progress is not None:
                    on_progress(n + 1, len(rows), {"stage": "teacher"})
        return cls(idx, logp, tail, cls._targets(rows), top_k)

    @classmethod
    def concat(cls, first: "TeacherCache", second: "TeacherCache") -> "TeacherCache":
        """The cache of `first`'s rows followed by `second`'s (both made with the same k)."""
        if first.top_k != second.top_k:
            raise HopscotchError(f"teacher caches of top-{first.top_k} and top-{second.top_k} cannot be joined")
        return cls(first.idx + second.idx, first.logp + second.logp, first.tail + second.tail,
                   torch.cat([first.targets, second.targets]), first.top_k)

    def matches(self, rows: Sequence[Row]) -> bool:
        t = self._targets(rows)
        return len(rows) == len(self.idx) and t.shape == self.targets.shape and bool((t == self.targets).all())

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from ..fileio import atomic_write

        tensors = {"targets": self.targets.contiguous(), "top_k": torch.tensor([self.top_k])}
        for i in range(len(self.idx)):
            tensors.update({f"idx_{i}": self.idx[i].contiguous(), f"logp_{i}": self.logp[i].contiguous(),
                            f"tail_{i}": self.tail[i].contiguous()})
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))

    @classmethod
    def load(cls, path: str | Path, rows: Sequence[Row], top_k: int = TEACHER_TOP_K) -> "TeacherCache | None":
        """The cache saved at `path` if it was made for these rows with this k, else None."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError):
            return None
        n = len(rows)
        if int(t.get("top_k", torch.tensor([-1]))[0]) != top_k or any(f"idx_{i}" not in t for i in range(n)):
            return None
        out = cls([t[f"idx_{i}"] for i in range(n)], [t[f"logp_{i}"] for i in range(n)],
                  [t[f"tail_{i}"] for i in range(n)], t["targets"], top_k)
        return out if out.matches(rows) else None

    def kl(self, i: int, lq: torch.Tensor, index: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Token-mean (or sum) KL of row i's coarsened teacher || student log-probs `lq` (N, V); differentiable.
        `index`: the positions of row i that `lq` covers (a part of the row), default all."""
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        where = pick(self.idx[i]).to(device=lq.device, dtype=torch.int64)
        if where.shape[0] != lq.shape[0]:
            raise HopscotchError(f"teacher cache row {i} has {where.shape[0]} positions, the row {lq.shape[0]}")
        lp, lp_rest = pick(self.logp[i]).to(lq.device), pick(self.tail[i]).to(lq.device)
        lq_top = lq.gather(-1, where)                                        # (N, k)
        kl = (lp.exp() * (lp - lq_top)).sum(-1)                              # (N,)
        if where.shape[1] < lq.shape[-1]:
            lq_rest = lq.scatter(-1, where, float("-inf")).logsumexp(-1)     # (N,) log of the student's rest
            p_rest = lp_rest.exp()
            kl = kl + torch.where(p_rest > 0, p_rest * (lp_rest - lq_rest), torch.zeros_like(kl))
        return kl.mean() if reduction == "mean" else kl.sum()


@dataclass
class Objective:
    """What scoring and training minimise (see module docstring); `teacher`: a TeacherCache for the rows being
    trained on, or None for a teacher forward per step."""

    name: str = "ce"
    kl_weight: float = 1.0
    teacher: TeacherCache | None = None

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise HopscotchError(f"unknown objective {self.name!r}; use one of {', '.join(OBJECTIVES)}")
        if not (isinstance(self.kl_weight, (int, float)) and math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise HopscotchError(f"kl-weight must be a finite number >= 0, not {self.kl_weight!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.name != "ce"


def teacher_logprobs(hs: Hopscotch, row: Row) -> torch.Tensor:
    """(N, V) log-probs of the original model (nothing skipped, all ones) at the row's response positions."""
    with torch.no_grad(), hs.in_thread():
        return torch.log_softmax(row_logits(hs.model, row), -1)


def objective_loss(hs: Hopscotch, row: Row, objective: Objective | None = None, key: int | None = None,
                   index: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """The objective on one row, token mean (or sum), differentiable. `key`: the row's index in objective.teacher;
    `index`: where `row`'s positions sit among row `key`'s (a part of it, data.split_row)."""
    obj = objective or Objective()
    if obj.name == "ce":
        return row_loss(hs.model, row, reduction)
    lp = None
    if obj.teacher is None or key is None:
        lp = teacher_logprobs(hs, row)  # before the student forward: the handle's state is untouched
    lq = torch.log_softmax(row_logits(hs.model, row), -1)  # (N, V)
    if lp is not None:
        kl = (lp.exp() * (lp - lq)).sum(-1)
        kl = kl.mean() if reduction == "mean" else kl.sum()
    else:
        kl = obj.teacher.kl(key, lq, index=index, reduction=reduction)
    if obj.name == "kl":
        return kl
    ce = F.nll_loss(lq, row.targets.to(lq.device), reduction=reduction)
    return ce + obj.kl_weight * kl


def dataset_objective(hs: Hopscotch, rows: Sequence[Row], objective: Objective | None = None) -> float:
    """Token-mean objective over rows (no grad; exact KL: a teacher forward per row)."""
    obj = objective or Objective()
    if obj.name == "ce":
        return dataset_loss(hs.model, rows)
    exact = Objective(obj.name, obj.kl_weight, None)
    total, n = 0.0, 0
    with torch.no_grad():
        for row in rows:
            total += float(objective_loss(hs, row, exact)) * row.n_tokens
            n += row.n_tokens
    return total / max(n, 1)


@dataclass
class TrainConfig:
    lr: float = _RUN.lr
    epochs: int = _RUN.epochs
    seed: int = _RUN.seed
    objective: Objective | None = None                 # None: ce (the paper's)
    lora_lr: float = _RUN.lora_lr                      # lr of the low-rank deltas (when the handle has them)


def make_optimizer(hs: Hopscotch, lr: float, lora_lr: float | None = None) -> torch.optim.Adam:
    """Adam over hs.trainable(): the scalars (and channel multipliers) at `lr`, the low-rank deltas at
    `lora_lr` (default: lr)."""
    params = hs.trainable()
    groups = [{"params": [p for p, n in zip(params, hs.trainable_names()) if n != "lora"], "lr": lr}]
    if hs.lora_rank:
        groups.append({"params": [hs.lora], "lr": lora_lr if lora_lr is not None else lr})
    return torch.optim.Adam(groups)


@dataclass
class TrainResult:
    status: str                                        # DONE | STOPPED | "diverged"
    epochs: list[dict] = field(default_factory=list)   # per epoch: train_loss, eval_loss (the objective)
    scales: torch.Tensor | None = None                 # last good scalars (float32, CPU)
    channel_scales: torch.Tensor | None = None         # last good per-channel multipliers (granularity channel)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)  # last good low-rank deltas (lora_rank > 0)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def _run_epoch(hs: Hopscotch, rows: Sequence[Row], opt: torch.optim.Optimizer, order: list[int],
               on_step: Callable[[int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None, group=None,
               objective: Objective | None = None) -> tuple[float, int, bool]:
    """One pass over rows in `order`. Returns (token-mean loss, steps done, diverged).

    With a process `group` of N ranks (distributed.Group), each row's examples are dealt over the ranks
    (data.split_row); every rank backpropagates its part's objective sum / the row's tokens and the gradients of
    the trainable parameters and the loss sums are all-reduced (summed), so each optimiser step sees the whole
    row, as in one process.
    """
    parts = None if group is None or group.world == 1 else [split_row(r, group.world)[group.rank] for r in rows]
    total, tokens, steps = 0.0, 0, 0
    params = hs.trainable()

    def restore(good: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, g in zip(params, good):
                p.copy_(g)
        hs.set_scales(hs.scales.detach().clone())  # skipped blocks keep b = 0

    for k, i in enumerate(order):
        if should_stop is not None and should_stop():
            break
        row = rows[i]
        good = [p.detach().clone() for p in params]
        opt.zero_grad(set_to_none=True)
        if parts is None:
            loss = objective_loss(hs, row, objective, key=i)
            value = float(loss.detach())
        else:
            value = _shared_step(hs, parts[i], row, i, group, objective)
        if not math.isfinite(value):
            restore(good)
            return total / max(tokens, 1), steps, True
        if parts is None:
            loss.backward()
        opt.step()
        if not all(torch.isfinite(p.detach()).all() for p in params):
            restore(good)
            return total / max(tokens, 1), steps, True
        total += value * row.n_tokens
        tokens += row.n_tokens
        steps += 1
        if on_step is not None:
            on_step(k + 1, value)
    return total / max(tokens, 1), steps, False


def _part_positions(row: Row, parts: int, rank: int) -> torch.Tensor:
    """Indices into `row`'s response positions of the ones in data.split_row(row, parts)[rank], in its order."""
    spans = example_spans(row)[rank::parts]  # the spans data.split_row gives this rank
    return torch.cat([((row.positions >= a) & (row.positions < b)).nonzero().flatten() for a, b in spans])


def _shared_step(hs: Hopscotch, part: Row | None, row: Row, key: int, group,
                 objective: Objective | None = None) -> float:
    """This rank's part of one row: backward of (part objective sum / row tokens), then the all-reduced (summed)
    gradients of the trainable parameters. Returns the row's token-mean objective (the same on every rank)."""
    params = hs.trainable()
    if part is not None:
        index = _part_positions(row, group.world, group.rank)
        loss_sum = objective_loss(hs, part, objective, key=key, index=index, reduction="sum")
        (loss_sum / row.n_tokens).backward()
        value = float(loss_sum.detach())
    else:
        value = 0.0
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    buf = torch.cat([g.detach().flatten().double() for g in grads]
                    + [torch.tensor([value], dtype=torch.float64, device=grads[0].device)])  # (params + 1,)
    group.all_reduce_sum(buf)
    at = 0
    for p in params:
        p.grad = buf[at:at + p.numel()].view_as(p).to(p.dtype)
        at += p.numel()
    return float(buf[-1]) / max(row.n_tokens, 1)


def shared_objective(hs: Hopscotch, rows: Sequence[Row], objective: Objective | None = None, group=None) -> float:
    """dataset_objective with rows dealt over the ranks of `group` (row j on rank j % N), the sums all-reduced."""
    if group is None or group.world == 1:
        return dataset_objective(hs, rows, objective)
    mine = rows[group.rank::group.world]
    n = sum(r.n_tokens for r in mine)
    part = dataset_objective(hs, mine, objective) * n if mine else 0.0
    buf = group.all_reduce_sum(torch.tensor([part, float(n)], dtype=torch.float64))
    return float(buf[0]) / max(float(buf[1]), 1.0)


def train_scales(
    hs: Hopscotch,
    train_rows: Sequence[Row],
    eval_rows: Sequence[Row] = (),
    cfg: TrainConfig | None = None,
    start_epoch: int = 0,
    opt_state: dict[str, torch.Tensor] | None = None,
    on_progress: Progress | None = None,
    on_epoch: Callable[[int, dict, torch.Tensor, dict[str, torch.Tensor]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    group=None,
) -> TrainResult:
    """Train hs.scales (in place) for cfg.epochs epochs; held-out loss after each.

    `on_epoch(epoch, record, scales, adam_state)` is where a caller saves them; resuming with
    `start_epoch` and that `opt_state` continues exactly as if never interrupted. With a process `group`,
    training is data parallel over each row's examples (see _run_epoch); every rank ends with the same scalars.
    """
    cfg = cfg or TrainConfig()
    opt = make_optimizer(hs, cfg.lr, cfg.lora_lr)
    if opt_state is not None:
        load_adam_state(opt, opt_state, hs.trainable_names())
    hs.model.eval()  # dropout off: the model is a fixed function of the scalars
    result = TrainResult(DONE)
    total = len(train_rows) * cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        def step(k: int, loss: float, epoch=epoch) -> None:
            if on_progress is not None:
                on_progress(epoch * len(train_rows) + k, total, {"stage": "train", "epoch": epoch, "loss": loss})

        train_loss, steps, diverged = _run_epoch(hs, train_rows, opt, _epoch_order(len(train_rows), cfg.seed,
                                                                                   epoch), step, should_stop, group,
                                                 cfg.objective)
        if diverged:
            result.status = "diverged"
            break
        if steps < len(train_rows):  # stopped mid-epoch: this epoch does not count
            result.status = STOPPED
            break
        record = {"epoch": epoch, "train_loss": train_loss, "rows": len(train_rows),
                  "eval_loss": shared_objective(hs, eval_rows, cfg.objective, group) if eval_rows else None}
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record, hs.effective_scales(), adam_state(opt, hs.trainable_names()))
    result.scales = hs.effective_scales()
    result.channel_scales = hs.effective_channel_scales()
    result.lora = hs.lora_state()
    return result


CHANNEL_PREFIX = "channel."  # adam_state keys of channel_scales
LORA_ADAM_PREFIX = "lora_adam."  # adam_state keys of the flat low-rank deltas
_ADAM_PREFIX = {"scales": "", "channel_scales": CHANNEL_PREFIX, "lora": LORA_ADAM_PREFIX}
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


def adam_state(opt: torch.optim.Adam, names: Sequence[str] = ("scales", "channel_scales")) -> dict[str, torch.Tensor]:
    """The Adam moments of each trained parameter (`names`: hs.trainable_names(), in the optimiser's order):
    keys exp_avg, exp_avg_sq, step for the scales, the same after CHANNEL_PREFIX for channel_scales and after
    LORA_ADAM_PREFIX for the low-rank deltas, as plain tensors (safetensors-friendly)."""
    out = {}
    state = opt.state_dict()["state"]
    for n, name in enumerate(names):
        st = state.get(n)
        if st:
            out.update({_ADAM_PREFIX[name] + k: torch.as_tensor(v).detach().cpu().clone().float()
                        for k, v in st.items()})
    return out


def load_adam_state(opt: torch.optim.Adam, state: dict[str, torch.Tensor],
                    names: Sequence[str] = ("scales", "channel_scales")) -> None:
    if not state:
        return
    params = [p for g in opt.param_groups for p in g["params"]]
    dev = params[0].device
    per: dict[int, dict] = {}
    for n, name in enumerate(names[:len(params)]):
        prefix = _ADAM_PREFIX[name]
        got = {k: state[prefix + k] for k in _ADAM_KEYS if prefix + k in state}
        if len(got) == len(_ADAM_KEYS) and got["exp_avg"].shape == params[n].shape:
            per[n] = {k: v.to(dev) if k != "step" else v.cpu() for k, v in got.items()}
    opt.load_state_dict({"state": per, "param_groups": opt.state_dict()["param_groups"]})


def score_candidate(
    hs: Hopscotch,
    rows: Sequence[Row],
    removed: Sequence[int],
    candidate: int,
    lr: float = 1e-2,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    objective: Objective | None = None,
) -> float:
    """The paper's score: skip removed + [candidate], scalars from all ones, one epoch of Adam at `lr`;
    the token-mean training loss (`objective`, default ce) over that pass. Trains what the handle's granularity
    trains. Leaves hs reset to all ones with `removed` skipped.
    """
    hs.reset()
    hs.skip([*removed, candidate])
    opt = make_optimizer(hs, lr)
    hs.model.eval()
    loss, _, diverged = _run_epoch(hs, rows, opt, _epoch_order(len(rows), seed, 0), on_step,
                                   objective=objective)
    hs.reset()
    hs.skip(list(removed))
    return float("inf") if diverged else loss
