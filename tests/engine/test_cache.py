"""KV-cache-correct decoding whatever is skipped: cached == uncached, for every family and skip pattern."""

from __future__ import annotations


import pytest
import torch
from helpers.models import CACHE_KW, N_LAYERS, PROMPT, decoding_floor, left_padded_batch, make_model, stepwise_logits
from helpers.numerics import assert_within_floor, bound, max_abs_diff

import hopscotch_core as hc
from hopscotch_core.engine.cache import cache_bytes

SKIP_SETS = {
    "none": [],
    "first": [0],
    "last": [N_LAYERS - 1],
    "every-other": list(range(0, N_LAYERS, 2)),
    "all-but-last": list(range(N_LAYERS - 1)),
    "all-but-first": list(range(1, N_LAYERS)),
}


def generate(model, ids, mask, use_cache):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                          use_cache=use_cache, pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("pattern", list(SKIP_SETS))
def test_cached_generation_equals_uncached(family, pattern):
    model = make_model(family)
    hs = hc.attach(model)
    torch.manual_seed(7)
    hs.set_scales(1 + 0.2 * torch.randn(N_LAYERS, 4)).skip(SKIP_SETS[pattern])
    ids, mask = left_padded_batch()
    with torch.no_grad():
        cached = generate(model, ids, mask, True)
        uncached = generate(model, ids, mask, False)
        assert torch.equal(cached, uncached)
        full_mask = torch.cat([mask, torch.ones(3, cached.shape[1] - PROMPT, dtype=mask.dtype)], dim=1)
        full = model(cached, attention_mask=full_mask, use_cache=False).logits
        steps, cache = stepwise_logits(model, cached, full_mask)
    real = full_mask.bool()  # padded positions are fully masked; their logits are arbitrary
    hs.reset()  # the same two routes with nothing skipped: this machine's rounding floor
    assert_within_floor(steps[real], full[real], decoding_floor(model, cached, full_mask), what="cached decoding")
    nbytes = cache_bytes(cache)
    for i in range(N_LAYERS):
        assert (nbytes[i] == 0) == (i in SKIP_SETS[pattern]), (i, nbytes)
        assert cache.layers[i].get_seq_length() == cached.shape[1] or cache.layers[i].is_sliding


def test_without_the_cache_fix_decoding_goes_wrong(monkeypatch):
    """Control: with skipped blocks leaving no trace in the cache, stock transformers decodes wrongly."""
    model = make_model("llama")
    hc.attach(model).skip([0])
    torch.manual_seed(0)
    ids = torch.randint(3, 101, (2, PROMPT + 6))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        good, _ = stepwise_logits(model, ids)
        monkeypatch.setattr("hopscotch_core.engine.formula.record_skipped", lambda *a: None)
        bad, cache = stepwise_logits(model, ids)
    # without the fix the error is over a hundred times what the fixed cache shows (rounding only)
    assert max_abs_diff(bad, full) > 100 * bound(full, floor=max_abs_diff(good, full))
    assert cache.get_seq_length() == 0


def test_skipped_cache_layers_hold_no_memory():
    model = make_model("llama")
    hc.attach(model).skip([0, 2])
    ids = torch.randint(3, 101, (4, 40))
    with torch.no_grad():
        _, cache = stepwise_logits(model, ids)
    for i in (0, 2):
        layer = cache.layers[i]
        assert layer.keys.shape == (4, 1, 40, 1)
        assert layer.keys.untyped_storage().nbytes() <= layer.keys.element_size()
    assert cache.layers[1].keys.untyped_storage().nbytes() == 4 * 2 * 40 * 8 * 4
    cache.crop(-5)
    assert cache.get_seq_length() == 35 and cache.layers[0].get_seq_length() == 35
    cache.batch_select_indices(torch.tensor([0, 2]))
    assert cache.layers[0].keys.shape[0] == 2 and cache.layers[1].keys.shape[0] == 2


def test_reusing_a_cache_after_changing_the_skip_set_is_refused():
    model = make_model("llama")
    hs = hc.attach(model)
    ids = torch.randint(3, 101, (1, PROMPT + 2))
    with torch.no_grad():
        _, cache = stepwise_logits(model, ids)
        hs.skip([1])
        with pytest.raises(RuntimeError, match="fresh cache"):
            model(ids[:, -1:], use_cache=True, **{CACHE_KW: cache})


def test_beam_search_with_skips_matches_uncached():
    model = make_model("llama")
    hc.attach(model).skip([0, 3])
    ids = torch.randint(3, 101, (2, PROMPT))
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw))


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_static_cache_with_skips_matches_uncached(fam):
    """Other cache layer kinds take a [B, 1, T, 1] placeholder through their own update and stay correct."""
    model = make_model(fam)
    hc.attach(model).skip([0, 2])
    ids = torch.randint(3, 101, (2, PROMPT))
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        static = model.generate(ids, use_cache=True, cache_implementation="static", **kw)
        assert torch.equal(static, model.generate(ids, use_cache=False, **kw))
