"""The Hopscotch formula per family, against the plain reference in reference.py."""

from __future__ import annotations

import pytest
import torch
from helpers.models import N_LAYERS, make_model
from helpers.reference import capture_layers, reference_layer
from torch import nn

import hopscotch_core as hc


def test_all_ones_is_the_stock_model(tiny, ids):
    ref = tiny(ids).logits
    hs = hc.attach(tiny)
    torch.testing.assert_close(tiny(ids).logits, ref, atol=1e-5, rtol=0)
    assert torch.equal(hs.scales, torch.ones(N_LAYERS, 4))


def test_reference_matches_stock_layers(family, tiny, ids):
    for rec, layer in zip(capture_layers(tiny, ids), tiny.get_decoder().layers):
        with torch.no_grad():
            mine = reference_layer(family, layer, rec["x"], rec["kw"], [1, 1, 1, 1], skipped=False)
        torch.testing.assert_close(mine, rec["out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("skip", [[], [0], [1, 3]])
def test_every_layer_follows_the_formula(family, tiny, ids, skip):
    hs = hc.attach(tiny)
    torch.manual_seed(5)
    hs.set_scales(torch.rand(N_LAYERS, 4) * 1.5 + 0.25)
    hs.skip(skip)
    scales = hs.effective_scales()
    for i, (rec, layer) in enumerate(zip(capture_layers(tiny, ids), tiny.get_decoder().layers)):
        with torch.no_grad():
            ref = reference_layer(family, layer, rec["x"], rec["kw"], scales[i], skipped=i in skip)
        torch.testing.assert_close(rec["out"], ref, atol=1e-5, rtol=1e-5)
    assert scales[skip, 0].eq(0).all()


def test_unsupported_architecture_names_supported_families():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)).eval()
    with pytest.raises(hc.UnsupportedArchitectureError) as err:
        hc.attach(model)
    for fam in ("llama", "qwen2", "gemma2", "olmo2"):
        assert fam in str(err.value)
    assert "forward" not in vars(model.transformer.h[0])


def test_not_a_transformers_model():
    with pytest.raises(hc.UnsupportedArchitectureError):
        hc.attach(nn.Linear(3, 3))


def test_granite_keeps_its_residual_multiplier(ids):
    """Changing residual_multiplier changes the patched model's output exactly as the stock model's."""
    a, b = make_model("granite"), make_model("granite", residual_multiplier=0.2)
    ra, rb = a(ids).logits, b(ids).logits
    assert (ra - rb).abs().max() > 1e-3
    hc.attach(a), hc.attach(b)
    torch.testing.assert_close(a(ids).logits, ra, atol=1e-5, rtol=0)
    torch.testing.assert_close(b(ids).logits, rb, atol=1e-5, rtol=0)
