"""Granularity "channel": per-channel b_att / b_mlp multipliers beside the [L, 4] scalars.

The forward is checked against the plain per-family formula (helpers/reference.py) with the b's as vectors;
folding, compaction and the adapter files against the attached model; decoding against a full forward.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from helpers.models import (FAMILIES, N_LAYERS, check_compact_roundtrip, decoding_floor, left_padded_batch, make_model,
                            make_tokenizer, random_deltas, stepwise_logits)
from helpers.numerics import assert_within_floor
from helpers.reference import capture_layers, reference_layer

import hopscotch_core as hc
from hopscotch_core.engine.folding import fold_model
from hopscotch_core.errors import AdapterMismatchError, ArtifactError, HopscotchError, InvalidScalesError

HIDDEN = 32


def channel_handle(model, skip=(1,), seed=0, s_ones=False):
    g = torch.Generator().manual_seed(seed)
    hs = hc.attach(model).skip(list(skip))
    scales = 1 + 0.3 * torch.randn(N_LAYERS, 4, generator=g)
    if s_ones:
        scales[:, [1, 3]] = 1.0
    hs.set_scales(scales)
    hs.set_channel_scales(1 + 0.5 * torch.randn(N_LAYERS, 2, HIDDEN, generator=g))
    return hs


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


def test_channel_scales_are_a_second_float32_parameter_all_ones(tiny, ids):
    ref = logits(tiny, ids)
    hs = hc.attach(tiny)
    assert hs.scales.shape == (N_LAYERS, 4) and hs.granularity == "scalar"
    assert hs.channel_scales.shape == (N_LAYERS, 2, HIDDEN) and hs.channel_scales.dtype == torch.float32
    assert torch.equal(hs.channel_scales, torch.ones(N_LAYERS, 2, HIDDEN))
    hs.set_granularity("channel")
    assert hs.trainable() == [hs.scales, hs.channel_scales]
    torch.testing.assert_close(logits(tiny, ids), ref, atol=1e-6, rtol=0)  # all ones: the original model
    hs.set_granularity("scalar")
    assert hs.trainable() == [hs.scales]


@pytest.mark.parametrize("skip", [[], [0], [1, 3]])
def test_channel_forward_follows_the_reference_formula(family, tiny, ids, skip):
    hs = channel_handle(tiny, skip, seed=3)
    scales, channels = hs.effective_scales(), hs.effective_channel_scales()
    for i, (rec, layer) in enumerate(zip(capture_layers(tiny, ids), tiny.get_decoder().layers)):
        with torch.no_grad():
            ref = reference_layer(family, layer, rec["x"], rec["kw"], scales[i], i in skip, channels[i])
        torch.testing.assert_close(rec["out"], ref, atol=1e-5, rtol=1e-5)


def test_the_vectors_act_in_training_and_inference_alike_and_get_gradients(ids):
    model = make_model("llama")
    hs = channel_handle(model, skip=[2])
    with torch.no_grad():
        inference = model(ids).logits
    out = model(ids).logits  # grad enabled: the Parameter path
    torch.testing.assert_close(out.detach(), inference, atol=1e-5, rtol=0)
    out.pow(2).mean().backward()
    g = hs.channel_scales.grad
    assert g is not None and g[0].abs().sum() > 0 and g[2, 1].abs().sum() > 0
    assert torch.equal(g[2, 0], torch.zeros(HIDDEN))  # skipped attention: its vector is not in the graph


def test_bf16_activations_stay_bf16_with_float32_channel_vectors(ids):
    """The float32 vectors must not promote bf16 hidden states (the next layer's bf16 weights would refuse them);
    found on a GPU, where bf16 is the default dtype. The parameter stays float32 and gets a gradient."""
    model = make_model("llama").to(torch.bfloat16)
    hs = hc.attach(model).set_granularity("channel")
    with torch.no_grad():
        hs.channel_scales.mul_(1.1)
    hs.skip([1])
    seen = []
    hs._probe = lambda idx, x, x1, out: seen.append(out.dtype)
    logits = model(ids).logits  # training mode: grad enabled, the vectors are the parameter
    assert set(seen) == {torch.bfloat16}
    logits.float().sum().backward()
    assert hs.channel_scales.dtype == torch.float32 and hs.channel_scales.grad is not None
    assert torch.isfinite(hs.channel_scales.grad).all() and hs.channel_scales.grad.abs().sum() > 0


def test_set_granularity_and_bad_channel_scales_are_refused(ids):
    hs = hc.attach(make_model("llama"))
    with pytest.raises(HopscotchError, match="unknown granularity 'row'"):
        hs.set_granularity("row")
    with pytest.raises(InvalidScalesError, match=r"shape \(4, 2, 32\)"):
        hs.set_channel_scales(torch.ones(N_LAYERS, 32))
    bad = torch.ones(N_LAYERS, 2, HIDDEN)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidScalesError, match="NaN"):
        hs.set_channel_scales(bad)
    assert hs.granularity == "scalar"
    hs.set_channel_scales(2 * torch.ones(N_LAYERS, 2, HIDDEN))
    hs.set_granularity("scalar")  # back to the paper's: the vectors are ones again
    assert torch.equal(hs.channel_scales, torch.ones(N_LAYERS, 2, HIDDEN))


def test_in_thread_with_nothing_is_the_original_model(ids):
    model = make_model("llama")
    ref = logits(model, ids)
    hs = channel_handle(model)
    changed = logits(model, ids)
    assert (changed - ref).abs().max() > 1e-2
    with hs.in_thread():
        torch.testing.assert_close(logits(model, ids), ref, atol=1e-6, rtol=0)
    with hs.in_thread([1], hs.effective_scales(), hs.effective_channel_scales()):
        torch.testing.assert_close(logits(model, ids), changed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fam", FAMILIES)
def test_folding_a_channel_adapter_gives_the_attached_logits(fam, tmp_path, ids):
    """Per output channel scales of o_proj/down_proj rows (or the post-norm's weight): exact up to rounding
    (eps ~ 0 so the residual scales' epsilon effect, folding.py, does not enter)."""
    model = make_model(fam, rms_norm_eps=1e-30)
    hs = channel_handle(model, skip=[1], s_ones=fam == "olmo2")  # OLMo 2 folds b only (no input norm)
    ref = logits(model, ids)
    folded = fold_model(hs)
    got = logits(folded, ids)
    assert ((ref - got).abs().max() / ref.abs().max()).item() <= 1e-5
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    out = hc.export(hs, tmp_path / "hf", format="hf", tokenizer=make_tokenizer())
    stock = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert ((ref - logits(stock, ids)).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_compact_channel_models_compute_the_attached_logits_and_reload(fam, fold, rank, tmp_path, ids):
    """With low-rank deltas too (rank 3): they merge into the copy's weights, fold or not."""
    model = make_model(fam)
    hs = channel_handle(model, skip=[1, 2])
    if rank:
        hs.set_lora(random_deltas(hs, rank))
    ref = logits(model, ids)
    small = hs.compact(fold=fold)
    assert (hc.compact_info(small).channel_scales is None) == fold
    assert not small.get_decoder().layers[0].self_attn.o_proj._forward_hooks  # no hook of the handle copied
    check_compact_roundtrip(small, ref, tmp_path, ids, logits)
    torch.testing.assert_close(logits(model, ids), ref)  # the attached model is left as it was


def test_adapter_roundtrip_records_objective_and_granularity(tmp_path, ids):
    model = make_model("llama")
    hs = channel_handle(model, skip=[2])
    ref = logits(model, ids)
    hs.save(tmp_path / "a", objective="kl")
    meta = json.loads((tmp_path / "a" / "hopscotch.json").read_text())
    assert meta["granularity"] == "channel" and meta["objective"] == "kl"
    scales, channels = hs.effective_scales(), hs.effective_channel_scales()
    hs.detach()
    back = hc.load_adapter(model, tmp_path / "a")
    assert back.granularity == "channel" and back.skipped == (2,)
    assert torch.equal(back.effective_scales(), scales) and torch.equal(back.effective_channel_scales(), channels)
    torch.testing.assert_close(logits(model, ids), ref, atol=0, rtol=0)
    back.detach()
    assert hc.load_adapter(model, tmp_path / "a", granularity="channel").granularity == "channel"


def test_an_adapter_of_another_granularity_is_one_clear_error(tmp_path):
    model = make_model("llama")
    ch = channel_handle(model)
    ch.save(tmp_path / "ch")
    ch.detach()
    hs = hc.attach(model).skip([1])
    hs.save(tmp_path / "sc", objective="ce")
    hs.detach()
    assert json.loads((tmp_path / "sc" / "hopscotch.json").read_text())["granularity"] == "scalar"
    with pytest.raises(AdapterMismatchError, match="trained with granularity 'channel', but 'scalar' was asked"):
        hc.load_adapter(model, tmp_path / "ch", granularity="scalar")
    with pytest.raises(AdapterMismatchError, match="granularity 'scalar', but 'channel'"):
        hc.load_adapter(model, tmp_path / "sc", granularity="channel")
    assert hc.handle_of(model) is None  # refused before anything was attached


def test_old_adapters_read_as_scalar_and_broken_channel_files_are_refused(tmp_path):
    model = make_model("llama")
    hs = hc.attach(model).skip([1])
    hs.save(tmp_path / "old")
    hs.detach()
    meta_path = tmp_path / "old" / "hopscotch.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("granularity"), meta.pop("objective")  # written before granularity existed
    meta_path.write_text(json.dumps(meta))
    assert hc.load_adapter(model, tmp_path / "old", granularity="scalar").granularity == "scalar"
    hc.handle_of(model).detach()
    meta["granularity"] = "channel"  # says channel, but the file has no vectors
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks 'channel_scales'"):
        hc.load_adapter(model, tmp_path / "old")
    meta["granularity"] = "rows"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="unknown granularity 'rows'"):
        hc.load_adapter(model, tmp_path / "old")


@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_kv_cache_decoding_stays_exact_with_channel_scales(fam):
    model = make_model(fam)
    channel_handle(model, skip=[0, 2])
    ids, mask = left_padded_batch()
    with torch.no_grad():
        kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
        cached = model.generate(input_ids=ids, use_cache=True, **kw)
        assert torch.equal(cached, model.generate(input_ids=ids, use_cache=False, **kw))
        full_mask = torch.cat([mask, torch.ones(3, cached.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
        full = model(cached, attention_mask=full_mask, use_cache=False).logits
        steps, _ = stepwise_logits(model, cached, full_mask)
    real = full_mask.bool()
    hc.handle_of(model).reset()  # the same two routes with nothing skipped, all ones: this machine's floor
    assert_within_floor(steps[real], full[real], decoding_floor(model, cached, full_mask), what="cached decoding")
