"""Objectives (ce | kl | ce+kl) for scoring and scale training, the teacher (per step or cached top-k), and channel
granularity in training. The reference teacher is an independent deep copy of the original model, never attached."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import examples, make_model

import hopscotch_core as hc
from hopscotch_core.errors import HopscotchError
from hopscotch_core.method import data, training
from hopscotch_core.method.training import Objective, TeacherCache


@pytest.fixture
def rows():
    return data.pack(examples([9, 14, 11, 7, 16, 12, 10, 8], seed=4), batch_tokens=30)


def setup(seed=0, skip=(1,)):
    model = make_model("llama", seed=seed)
    teacher = copy.deepcopy(model)  # the reference teacher: a separate, untouched copy
    hs = hc.attach(model).skip(list(skip))
    g = torch.Generator().manual_seed(seed)
    hs.set_scales(1 + 0.2 * torch.randn(4, 4, generator=g))
    return model, teacher, hs


def ref_logprobs(model, row):
    with torch.no_grad():
        out = model(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False).logits[0]
    return torch.log_softmax(out[row.positions].double(), -1)  # (N, V)


def ref_kl(teacher, student, row) -> float:
    lp, lq = ref_logprobs(teacher, row), ref_logprobs(student, row)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def ref_ce(student, row) -> float:
    return float(F.nll_loss(ref_logprobs(student, row), row.targets))


def test_objectives_equal_an_independent_computation(rows):
    model, teacher, hs = setup()
    row = rows[0]
    kl, ce = ref_kl(teacher, model, row), ref_ce(model, row)
    assert kl > 1e-4
    with torch.no_grad():
        assert float(training.objective_loss(hs, row, Objective("ce"))) == pytest.approx(ce, rel=1e-5)
        assert float(training.objective_loss(hs, row, Objective("kl"))) == pytest.approx(kl, rel=1e-4, abs=1e-7)
        got = float(training.objective_loss(hs, row, Objective("ce+kl", kl_weight=0.7)))
    assert got == pytest.approx(ce + 0.7 * kl, rel=1e-4)
    assert hs.skipped == (1,)  # the teacher forward left the handle's state alone


def test_kl_is_zero_for_the_original_model(rows):
    model, _, _ = setup(skip=())
    hs = hc.handle_of(model)
    hs.reset()
    assert training.dataset_objective(hs, rows, Objective("kl")) == pytest.approx(0.0, abs=1e-6)


def test_full_vocabulary_cache_gives_the_exact_kl_and_top_k_a_lower_bound(rows):
    model, teacher, hs = setup()
    vocab = model.config.vocab_size
    full = TeacherCache.build(hs, rows, top_k=vocab)
    small = TeacherCache.build(hs, rows, top_k=5)
    assert hs.skipped == (1,)
    for i, row in enumerate(rows):
        exact = ref_kl(teacher, model, row)
        with torch.no_grad():
            lq = torch.log_softmax(data.row_logits(model, row), -1)
            assert float(full.kl(i, lq)) == pytest.approx(exact, rel=1e-4, abs=1e-7)
            coarse = float(small.kl(i, lq))
        # reference: both distributions coarsened to the teacher's top 5 tokens + one bucket for the rest
        lp, lqd = ref_logprobs(teacher, row), lq.double()
        top = lp.topk(5, -1).indices
        mask = torch.zeros_like(lp, dtype=torch.bool).scatter(-1, top, True)
        p, q = lp.exp(), lqd.exp()
        p_rest, q_rest = (p * ~mask).sum(-1), (q * ~mask).sum(-1)
        want = ((p * (lp - lqd)) * mask).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
        assert coarse == pytest.approx(float(want.mean()), rel=1e-3, abs=1e-6)
        assert -1e-7 <= coarse <= exact + 1e-6


def test_teacher_cache_roundtrip_and_stale_caches_are_ignored(rows, tmp_path):
    _, _, hs = setup()
    cache = TeacherCache.build(hs, rows, top_k=7)
    cache.save(tmp_path / "t.safetensors")
    back = TeacherCache.load(tmp_path / "t.safetensors", rows, top_k=7)
    assert back is not None and all(torch.equal(a, b) for a, b in zip(back.logp, cache.logp))
    assert TeacherCache.load(tmp_path / "t.safetensors", rows, top_k=8) is None        # another k
    assert TeacherCache.load(tmp_path / "t.safetensors", rows[::-1], top_k=7) is None  # other rows
    assert TeacherCache.load(tmp_path / "missing.safetensors", rows, top_k=7) is None


@pytest.mark.parametrize("cached", [False, True])
def test_kl_training_moves_the_model_towards_the_original(rows, cached):
    model, teacher, hs = setup()
    before = sum(ref_kl(teacher, model, r) * r.n_tokens for r in rows) / sum(r.n_tokens for r in rows)
    obj = Objective("kl", teacher=TeacherCache.build(hs, rows) if cached else None)
    res = training.train_scales(hs, rows, rows, training.TrainConfig(lr=3e-2, epochs=4, objective=obj))
    after = sum(ref_kl(teacher, model, r) * r.n_tokens for r in rows) / sum(r.n_tokens for r in rows)
    assert res.status == "done" and after < 0.8 * before
    assert res.epochs[-1]["eval_loss"] == pytest.approx(after, rel=1e-3)  # held-out figure = exact KL


def test_channel_training_moves_the_vectors_and_fits_better_than_scalars(rows):
    out = {}
    for gran in ("scalar", "channel"):
        model, teacher, hs = setup()
        hs.set_granularity(gran)
        res = training.train_scales(hs, rows, (), training.TrainConfig(lr=3e-2, epochs=4,
                                                                     objective=Objective("kl")))
        moved = not torch.equal(hs.channel_scales.detach(), torch.ones_like(hs.channel_scales))
        assert moved == (gran == "channel") and (res.channel_scales is not None) == (gran == "channel")
        out[gran] = sum(ref_kl(teacher, model, r) * r.n_tokens for r in rows)
    assert out["channel"] < out["scalar"]  # a superset of the scalar model, same data and steps


@pytest.mark.parametrize("rank", [0, 2])
def test_resume_with_channel_and_delta_adam_state_equals_uninterrupted(rows, rank):
    def run(epochs, start=0, state=None, channels=None, scales=None, on_epoch=None, deltas=None):
        model, _, hs = setup()
        hs.set_granularity("channel").set_lora_rank(rank)
        if scales is not None:
            hs.set_scales(scales)
            hs.set_channel_scales(channels)
            hs.set_lora(deltas)
        cfg = training.TrainConfig(lr=3e-2, epochs=epochs, objective=Objective("ce+kl", 0.5), lora_lr=1e-2)
        training.train_scales(hs, rows, (), cfg, start_epoch=start, opt_state=state, on_epoch=on_epoch)
        return hs

    full = run(3)
    saved = {}

    def keep(epoch, record, scales, adam):
        saved.update(scales=scales, adam=adam)

    first = run(1, on_epoch=keep)
    assert any(k.startswith(training.CHANNEL_PREFIX) for k in saved["adam"])
    assert any(k.startswith(training.LORA_ADAM_PREFIX) for k in saved["adam"]) == bool(rank)
    again = run(3, start=1, state=saved["adam"], scales=saved["scales"], channels=first.effective_channel_scales(),
                deltas=first.lora_state())
    assert torch.equal(again.scales, full.scales) and torch.equal(again.channel_scales, full.channel_scales)
    assert torch.equal(again.lora, full.lora) and again.lora.numel() == (rank > 0) * again.lora.numel()


def test_score_candidate_uses_the_objective(rows):
    model, teacher, hs = setup(skip=())
    hs.reset()
    ce = training.score_candidate(hs, rows, removed=[], candidate=2, objective=Objective("ce"))
    kl = training.score_candidate(hs, rows, removed=[], candidate=2, objective=Objective("kl"))
    both = training.score_candidate(hs, rows, removed=[], candidate=2, objective=Objective("ce+kl", 0.0))
    assert math.isfinite(kl) and 0 < kl < ce and both == ce
    assert hs.skipped == () and torch.equal(hs.scales.detach(), torch.ones(4, 4))


def test_bad_objectives_are_refused():
    with pytest.raises(HopscotchError, match="unknown objective 'mse'"):
        Objective("mse")
    for w in (-1.0, float("nan"), float("inf")):
        with pytest.raises(HopscotchError, match="kl-weight must be a finite number >= 0"):
            Objective("ce+kl", w)
