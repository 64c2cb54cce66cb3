"""Speed/memory measurement: the numbers that are not timings are exact and checked against their definitions."""

from __future__ import annotations

import pytest
import torch
from helpers.models import N_LAYERS, make_model

import hopscotch_core as hc
from hopscotch_core.measure import speed
from hopscotch_core.errors import InvalidBlocksError
from hopscotch_core.measure.info import speedup_bound
from hopscotch_core.engine.scaling import handle_of


def _attn_bytes(model, blocks):
    layers = hc.get_family(model).layers
    return sum(p.numel() * p.element_size() for i in blocks for p in layers[i].self_attn.parameters())


def test_rows_memory_and_bounds_are_exact():
    model = make_model("llama")
    ids = torch.randint(3, 100, (1, 9))
    before = model(ids).logits
    rows = speed.measure(model, skipped=[0, 2], contexts=(16, 24), batch_sizes=(2,), decode_tokens=3, rounds=2)
    assert [(r["variant"], r["context"]) for r in rows] == [
        (v, c) for c in (16, 24) for v in ("original", "skipped", "compact")]
    full = speed.param_bytes(model)
    for r in rows:
        assert r["batch"] == 2 and r["rounds"] == 2
        assert r["prefill_s_min"] <= r["prefill_s_median"] <= r["prefill_s_max"]
        assert r["decode_tok_s_min"] <= r["decode_tok_s_median"] <= r["decode_tok_s_max"]
        assert r["flop_bound"] == pytest.approx(speedup_bound(model, r["context"] // 2, r["blocks"]))
        assert r["flop_bound_decode"] == pytest.approx(speedup_bound(model, r["context"], r["blocks"]))
    orig = [r for r in rows if r["variant"] == "original"]
    assert all(r["speedup_prefill"] == 1.0 and r["speedup_decode"] == 1.0 and r["k"] == 0 for r in orig)
    for o, s, c in zip(rows[0::3], rows[1::3], rows[2::3]):
        # K and V of every kept block, fp32, for context tokens: 2 x B x kv_heads x C x head_dim x 4 bytes
        per_layer = 2 * 2 * 2 * o["context"] * 8 * 4
        assert o["kv_cache_bytes"] == N_LAYERS * per_layer
        assert s["kv_cache_bytes"] == c["kv_cache_bytes"] == (N_LAYERS - 2) * per_layer
        assert s["param_bytes"] == full
        assert c["param_bytes"] == full - _attn_bytes(model, [0, 2])
        assert s["k"] == c["k"] == 2 and s["blocks"] == [0, 2] and s["flop_bound"] > 1.0
    assert handle_of(model) is None
    assert torch.equal(model(ids).logits, before)  # left as it was


def test_several_skip_sets_share_one_original():
    model = make_model("qwen2")
    rows = speed.measure(model, contexts=(8,), decode_tokens=2, rounds=1, variants=("original", "compact"),
                         skip_sets=[([1], None), ([0, 1, 3], None)])
    assert [(r["variant"], r["k"]) for r in rows] == [("original", 0), ("compact", 1), ("compact", 3)]
    assert rows[2]["param_bytes"] < rows[1]["param_bytes"] < rows[0]["param_bytes"]
    df = speed.table(rows)
    assert list(df["blocks"]) == ["", "1", "0 1 3"]
    assert "compact" in speed.format_table(rows)


def test_deci_variant_is_the_export_model_with_the_kept_layers_cache_and_weights():
    """The deci variant runs the model a deci export holds (everything folded, the folder's own modeling code):
    its KV cache has one entry per attending layer and its parameters lack exactly the skipped attention's."""
    model = make_model("llama")
    rows = speed.measure(model, skipped=[1, 3], contexts=(16,), decode_tokens=2, rounds=1,
                         variants=("original", "deci"))
    assert [r["variant"] for r in rows] == ["original", "deci"]
    o, d = rows
    per_layer = 2 * 1 * 2 * 16 * 8 * 4  # K and V, batch 1, 2 KV heads, 16 tokens, head_dim 8, fp32
    assert o["kv_cache_bytes"] == N_LAYERS * per_layer
    assert d["kv_cache_bytes"] == (N_LAYERS - 2) * per_layer
    assert d["param_bytes"] == speed.param_bytes(model) - _attn_bytes(model, [1, 3]) - sum(
        hc.get_family(model).layers[i].input_layernorm.weight.numel() * 4 for i in (1, 3))
    assert handle_of(model) is None
    assert speed.deci_possible(model, [1, 3]) and not speed.deci_possible(model, [0, 3])
    assert not speed.deci_possible(make_model("gemma2"), [1])


def test_bad_settings_are_clear_errors():
    model = make_model("llama")
    with pytest.raises(InvalidBlocksError, match="out of range"):
        speed.measure(model, skipped=[N_LAYERS], contexts=(8,))
    with pytest.raises(speed.SpeedError, match="exceeds"):
        speed.measure(model, skipped=[1], contexts=(300,))
    with pytest.raises(speed.SpeedError, match="unknown variant"):
        speed.measure(model, skipped=[1], variants=("fast",))
    with pytest.raises(speed.SpeedError, match="blocks to skip"):
        speed.measure(model, contexts=(8,))
    with hc.attach(model) as hs:
        small = hs.skip([1]).compact()
        with pytest.raises(speed.SpeedError, match="detach"):
            speed.measure(model, skipped=[1])
    with pytest.raises(speed.SpeedError, match="already compact"):
        speed.measure(small, skipped=[1])
