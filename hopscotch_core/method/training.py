"""Scale training (Adam on the float32 scalars only) and the paper's one-pass candidate scoring.

    hs = hc.attach(model); hs.skip([4, 17])
    result = train_scales(hs, train_rows, eval_rows, TrainConfig(lr=3e-3, epochs=3))
    loss = score_candidate(hs, rows, removed=[4], candidate=17)   # one epoch at lr 1e-2 from all ones

One row (several packed examples, see data.py) is one step; the step loss is the mean over its response tokens.
Epoch order is a seeded shuffle. A NaN/inf loss or scalar stops training and restores the last good scalars.
No UI here: progress goes to `on_progress(step, total, info)`, `should_stop()` ends a run cleanly after a step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .data import Row, dataset_loss, row_loss, split_row
from ..engine.scaling import Hopscotch
from .settings import RunSettings

_RUN = RunSettings()  # the defaults come from the run settings' schema (method/settings.py), the one place

Progress = Callable[[int, int, dict], None]


@dataclass
class TrainConfig:
    lr: float = _RUN.lr
    epochs: int = _RUN.epochs
    seed: int = _RUN.seed


@dataclass
class TrainResult:
    status: str                                        # "done" | "stopped" | "diverged"
    epochs: list[dict] = field(default_factory=list)   # per epoch: train_loss, eval_loss
    scales: torch.Tensor | None = None                 # last good scalars (float32, CPU)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def _run_epoch(hs: Hopscotch, rows: Sequence[Row], opt: torch.optim.Optimizer, order: list[int],
               on_step: Callable[[int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None, group=None) -> tuple[float, int, bool]:
    """One pass over rows in `order`. Returns (token-mean loss, steps done, diverged).

    With a process `group` of N ranks (distributed.Group), each row's examples are dealt over the ranks
    (data.split_row); every rank backpropagates its part's loss sum / the row's tokens and the scalar gradients
    and loss sums are all-reduced (summed), so each optimiser step sees the whole row, as in one process.
    """
    parts = None if group is None or group.world == 1 else [split_row(r, group.world)[group.rank] for r in rows]
    total, tokens, steps = 0.0, 0, 0
    for k, i in enumerate(order):
        if should_stop is not None and should_stop():
            break
        row = rows[i]
        good = hs.scales.detach().clone()
        opt.zero_grad(set_to_none=True)
        if parts is None:
            loss = row_loss(hs.model, row, "mean")
            value = float(loss.detach())
            if not math.isfinite(value):
                hs.set_scales(good)
                return total / max(tokens, 1), steps, True
            loss.backward()
        else:
            value = _shared_step(hs, parts[i], row.n_tokens, group)
            if not math.isfinite(value):
                hs.set_scales(good)
                return total / max(tokens, 1), steps, True
        opt.step()
        if not torch.isfinite(hs.scales.detach()).all():
            hs.set_scales(good)
            return total / max(tokens, 1), steps, True
        total += value * row.n_tokens
        tokens += row.n_tokens
        steps += 1
        if on_step is not None:
            on_step(k + 1, value)
    return total / max(tokens, 1), steps, False


def _shared_step(hs: Hopscotch, part: Row | None, n_tokens: int, group) -> float:
    """This rank's part of one row: backward of (part loss sum / row tokens), then the all-reduced (summed)
    scalar gradient in hs.scales.grad. Returns the row's token-mean loss (the same on every rank)."""
    scales = hs.scales
    if part is not None:
        loss_sum = row_loss(hs.model, part, "sum")
        (loss_sum / n_tokens).backward()
        value = float(loss_sum.detach())
    else:
        value = 0.0
    grad = scales.grad if scales.grad is not None else torch.zeros_like(scales)
    buf = torch.cat([grad.detach().flatten().double(), torch.tensor([value], dtype=torch.float64,
                                                                     device=grad.device)])  # (4L + 1,)
    group.all_reduce_sum(buf)
    scales.grad = buf[:-1].view_as(scales).to(scales.dtype)
    return float(buf[-1]) / max(n_tokens, 1)


def shared_dataset_loss(model, rows: Sequence[Row], group=None) -> float:
    """dataset_loss with rows dealt over the ranks of `group` (row j on rank j % N) and the sums all-reduced."""
    if group is None or group.world == 1:
        return dataset_loss(model, rows)
    mine = rows[group.rank::group.world]
    n = sum(r.n_tokens for r in mine)
    part = dataset_loss(model, mine) * n if mine else 0.0
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
    opt = torch.optim.Adam([hs.scales], lr=cfg.lr)
    if opt_state is not None:
        load_adam_state(opt, opt_state)
    hs.model.eval()  # dropout off: the model is a fixed function of the scalars
    result = TrainResult("done")
    total = len(train_rows) * cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        def step(k: int, loss: float, epoch=epoch) -> None:
            if on_progress is not None:
                on_progress(epoch * len(train_rows) + k, total, {"stage": "train", "epoch": epoch, "loss": loss})

        train_loss, steps, diverged = _run_epoch(hs, train_rows, opt, _epoch_order(len(train_rows), cfg.seed,
                                                                                   epoch), step, should_stop, group)
        if diverged:
            result.status = "diverged"
            break
        if steps < len(train_rows):  # stopped mid-epoch: this epoch does not count
            result.status = "stopped"
            break
        record = {"epoch": epoch, "train_loss": train_loss,
                  "eval_loss": shared_dataset_loss(hs.model, eval_rows, group) if eval_rows else None}
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record, hs.effective_scales(), adam_state(opt))
    result.scales = hs.effective_scales()
    return result


def adam_state(opt: torch.optim.Adam) -> dict[str, torch.Tensor]:
    """The Adam moments of the single scales parameter, as plain tensors (safetensors-friendly)."""
    st = opt.state_dict()["state"].get(0)
    if not st:
        return {}
    return {k: torch.as_tensor(v).detach().cpu().clone().float() for k, v in st.items()}


def load_adam_state(opt: torch.optim.Adam, state: dict[str, torch.Tensor]) -> None:
    if not state:
        return
    dev = opt.param_groups[0]["params"][0].device
    st = {k: (v.to(dev) if k != "step" else v.cpu()) for k, v in state.items()}
    opt.load_state_dict({"state": {0: st}, "param_groups": opt.state_dict()["param_groups"]})


def score_candidate(
    hs: Hopscotch,
    rows: Sequence[Row],
    removed: Sequence[int],
    candidate: int,
    lr: float = 1e-2,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """The paper's score: skip removed + [candidate], scalars from all ones, one epoch of Adam at `lr`;
    the token-mean training loss over that pass. Leaves hs reset to all ones with `removed` skipped.
    """
    hs.reset()
    hs.skip([*removed, candidate])
    opt = torch.optim.Adam([hs.scales], lr=lr)
    hs.model.eval()
    loss, _, diverged = _run_epoch(hs, rows, opt, _epoch_order(len(rows), seed, 0), on_step)
    hs.reset()
    hs.skip(list(removed))
    return float("inf") if diverged else loss
