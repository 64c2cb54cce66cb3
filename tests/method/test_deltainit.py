"""The deltas' least-squares start: checked against a fit computed here from the stock model's own activations."""

from __future__ import annotations

import pytest
import torch
from helpers.models import examples, make_model

import hopscotch_core as hc
from hopscotch_core.errors import HopscotchError
from hopscotch_core.method import data, deltainit


@pytest.fixture
def rows():
    return data.pack(examples([19, 24, 21, 17, 26, 22, 20, 18], seed=3), batch_tokens=60)


def stock_activations(model, rows, block: int):
    """(H (T, in), A (T, out)) read with plain forward hooks on the stock model (no handle): the input of layer
    block-1's down_proj and what attention `block` adds to the residual stream (its output, times Granite's
    residual multiplier, which the delta's effect carries too and so cancels)."""
    layers = model.model.layers
    got = {"h": [], "a": []}
    hooks = [layers[block - 1].mlp.down_proj.register_forward_hook(
                 lambda m, args, out: got["h"].append(args[0].reshape(-1, args[0].shape[-1]))),
             layers[block].self_attn.o_proj.register_forward_hook(
                 lambda m, args, out: got["a"].append(out.reshape(-1, out.shape[-1])))]
    try:
        with torch.no_grad():
            for row in rows:
                model(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(got["h"]).double(), torch.cat(got["a"]).double()


def residual_share(h, a, w):
    """Sum of squares of a - h w^T over that of a."""
    return float(((a - h @ w.T) ** 2).sum() / (a ** 2).sum())


@pytest.mark.parametrize("family", ["llama", "granite"])
def test_full_rank_start_is_the_least_squares_map(family, rows):
    model = make_model(family)
    with hc.attach(model) as hs:
        hs.set_lora_rank(32)  # = the hidden width: nothing truncated
        state, fits = deltainit.lsq_deltas(hs, rows, [2])
    h, a = stock_activations(model, rows, 2)
    assert h.shape[0] > h.shape[1]  # more tokens than features: the least-squares map is determined
    want = torch.linalg.lstsq(h, a).solution.T                          # (out, in)
    got = (state["1.mlp.B"].double() @ state["1.mlp.A"].double())
    fitted_want, fitted_got = h @ want.T, h @ got.T
    rel = float((fitted_got - fitted_want).norm() / fitted_want.norm())
    assert rel < 1e-2, rel  # the ridge (1e-4 of the mean eigenvalue) moves the fit by far less
    assert fits == [{"block": 2, "layer": 1, "tokens": h.shape[0], "explained": pytest.approx(
        1 - residual_share(h, a, got), rel=1e-6, abs=1e-9)}]
    # every other delta kept its start: B = 0
    assert all(float(v.abs().max()) == 0 for k, v in state.items() if k.endswith(".B") and k != "1.mlp.B")


def test_low_rank_start_beats_truncating_the_full_map(rows):
    model = make_model("llama")
    with hc.attach(model) as hs:
        hs.set_lora_rank(2)
        state, fits = deltainit.lsq_deltas(hs, rows, [1, 3])
    assert [f["layer"] for f in fits] == [0, 2]
    for block in (1, 3):
        h, a = stock_activations(model, rows, block)
        full = torch.linalg.lstsq(h, a).solution.T
        u, s, vt = torch.linalg.svd(full, full_matrices=False)
        naive = (u[:, :2] * s[:2]) @ vt[:2]  # rank 2 by the map's own singular values, blind to the data
        got = state[f"{block - 1}.mlp.B"].double() @ state[f"{block - 1}.mlp.A"].double()
        assert torch.linalg.matrix_rank(got) == 2
        ours, trunc, best = residual_share(h, a, got), residual_share(h, a, naive), residual_share(h, a, full)
        assert best - 1e-9 <= ours <= trunc + 1e-9, (best, ours, trunc)
        fit = next(f for f in fits if f["block"] == block)
        assert fit["explained"] == pytest.approx(1 - ours, rel=1e-6, abs=1e-9)
        # the two factors start at one scale (an even split of the singular values), so Adam moves both
        na, nb = float(state[f"{block - 1}.mlp.A"].norm()), float(state[f"{block - 1}.mlp.B"].norm())
        assert 0.5 < na / nb < 2.0


def test_applied_start_puts_back_what_the_block_added(rows):
    """With block 2 skipped, the residual stream after layer 2's (absent) attention differs from the original's
    by exactly the fit's residual: the share of a the map does not reproduce."""
    model = make_model("llama")
    h, a = stock_activations(model, rows, 2)
    with hc.attach(model) as hs:
        hs.set_lora_rank(4)
        state, fits = deltainit.lsq_deltas(hs, rows, [2])

        def mids(**cfg):
            out = []
            with hs.in_thread(**cfg), hs.probe(lambda i, x, x1, o: out.append(x1) if i == 2 else None):
                data.forward_rows(model, rows)
            return torch.cat([m.reshape(-1, m.shape[-1]) for m in out]).double()

        original, started, zero = mids(), mids(skipped=[2], lora=state), mids(skipped=[2])
    err = float(((started - original) ** 2).sum() / (a ** 2).sum())
    assert err == pytest.approx(1 - fits[0]["explained"], rel=1e-3)
    assert float(((zero - original) ** 2).sum() / (a ** 2).sum()) == pytest.approx(1.0, rel=1e-4)
    assert err < 1.0


def test_block_zero_keeps_the_zero_start_and_bad_uses_are_refused(rows):
    model = make_model("llama")
    with hc.attach(model) as hs:
        with pytest.raises(HopscotchError, match="lora rank"):
            deltainit.lsq_deltas(hs, rows, [0, 2])
        hs.set_lora_rank(2)
        state, fits = deltainit.lsq_deltas(hs, rows, [0])
        assert fits == [] and all(float(v.abs().max()) == 0 for k, v in state.items() if k.endswith(".B"))
    gemma = make_model("gemma2")
    with hc.attach(gemma) as hs:
        hs.set_lora_rank(2)
        with pytest.raises(HopscotchError, match="delta-init zero"):
            deltainit.lsq_deltas(hs, rows, [2])
