"""Scale training: only the scalars move, reproducible, NaN-safe, stoppable, resumable; candidate scoring."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.models import make_model
from helpers.models import examples

import hopscotch_core as hc
from hopscotch_core.method import data, training


@pytest.fixture
def rows():
    return data.pack(examples([9, 14, 11, 7, 16, 12, 10, 8], seed=4), batch_tokens=30)


def trained(rows, epochs=2, seed=0, **kw):
    model = make_model("llama")
    hs = hc.attach(model).skip([1])
    res = training.train_scales(hs, rows, rows[:1], training.TrainConfig(lr=3e-2, epochs=epochs, seed=seed), **kw)
    return model, hs, res


def test_training_lowers_the_loss_and_moves_only_the_scalars(rows):
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hs = hc.attach(model).skip([1])
    start = data.dataset_loss(model, rows)
    res = training.train_scales(hs, rows, rows, training.TrainConfig(lr=3e-2, epochs=4))
    assert res.status == "done" and len(res.epochs) == 4
    assert res.epochs[-1]["eval_loss"] < start
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.equal(hs.scales.detach(), torch.ones_like(hs.scales))
    assert hs.scales[1, 0] == 0  # the skipped block's b_att stayed 0


def test_training_is_reproducible(rows):
    _, a, _ = trained(rows, seed=3)
    _, b, _ = trained(rows, seed=3)
    _, c, _ = trained(rows, seed=4)
    assert torch.equal(a.scales, b.scales) and not torch.equal(a.scales, c.scales)


def test_resume_from_saved_epoch_equals_uninterrupted(rows):
    _, full, _ = trained(rows, epochs=3)
    saved = {}
    _, _, res = trained(rows, epochs=1, on_epoch=lambda e, r, s, adam: saved.update(scales=s, adam=adam))
    model = make_model("llama")
    hs = hc.attach(model).skip([1])
    hs.set_scales(saved["scales"])
    training.train_scales(hs, rows, rows[:1], training.TrainConfig(lr=3e-2, epochs=3), start_epoch=1,
                          opt_state=saved["adam"])
    assert torch.equal(hs.scales, full.scales)


def test_nan_stops_and_keeps_the_last_good_scalars(rows, monkeypatch):
    real = data.row_loss
    calls = {"n": 0}

    def flaky(model, row, reduction="sum"):
        calls["n"] += 1
        loss = real(model, row, reduction)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(training, "row_loss", flaky)
    model = make_model("llama")
    hs = hc.attach(model).skip([1])
    snapshots = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        snapshots.append(hs.scales.detach().clone())
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    res = training.train_scales(hs, rows, (), training.TrainConfig(lr=3e-2, epochs=3))
    assert res.status == "diverged" and len(snapshots) == 3
    assert torch.isfinite(hs.scales).all() and torch.equal(hs.scales.detach(), snapshots[-1])


def test_should_stop_ends_cleanly(rows):
    steps = []
    _, hs, res = trained(rows, epochs=3, on_progress=lambda s, t, i: steps.append(s),
                         should_stop=lambda: len(steps) >= len(rows) + 1)
    # stopped one step into the second epoch: only the first epoch counts
    assert res.status == "stopped" and len(steps) == len(rows) + 1 and [e["epoch"] for e in res.epochs] == [0]


def test_score_candidate_starts_from_ones_and_restores(rows):
    model = make_model("llama")
    hs = hc.attach(model).skip([0])
    hs.set_scales(torch.full((4, 4), 0.9))
    loss = training.score_candidate(hs, rows, removed=[0], candidate=2, lr=1e-2)
    assert math.isfinite(loss) and hs.skipped == (0,)
    assert torch.equal(hs.scales.detach(), hs.effective_scales()) and hs.scales[1, 1] == 1.0
    again = training.score_candidate(hs, rows, removed=[0], candidate=2, lr=1e-2)
    assert loss == again
