"""Low-rank healing: rank-R deltas B A on each kept branch's output projection (engine/lowrank.py).

The forward is checked against the plain per-family formula (helpers/reference.py) run on an independent copy of
the model whose o_proj / down_proj weights the test itself has added B A to; folding, compaction, stock
transformers, adapters, threads and training against the attached model.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from helpers.models import FAMILIES, N_LAYERS, examples, make_model, make_tokenizer, random_deltas
from helpers.reference import capture_layers, reference_layer

import hopscotch_core as hc
from hopscotch_core.engine import lowrank
from hopscotch_core.engine.folding import fold_model
from hopscotch_core.errors import AdapterMismatchError, ArtifactError, HopscotchError
from hopscotch_core.method import data, training
from hopscotch_core.method.training import Objective

HIDDEN, INTER = 32, 64


def healed(model, skip=(1,), rank=3, seed=0, channel=True, s_ones=False):
    g = torch.Generator().manual_seed(seed + 100)
    hs = hc.attach(model).skip(list(skip))
    scales = 1 + 0.3 * torch.randn(N_LAYERS, 4, generator=g)
    if s_ones:
        scales[:, [1, 3]] = 1.0
    hs.set_scales(scales)
    if channel:
        hs.set_channel_scales(1 + 0.3 * torch.randn(N_LAYERS, 2, HIDDEN, generator=g))
    hs.set_lora(random_deltas(hs, rank, seed))
    return hs


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


def rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def test_fresh_deltas_leave_the_model_unchanged_and_detach_removes_them(ids):
    model = make_model("llama")
    ref = logits(model, ids)
    hs = hc.attach(model).set_lora_rank(4)
    assert hs.lora.dtype == torch.float32 and hs.lora.numel() == 4 * N_LAYERS * (HIDDEN + HIDDEN + INTER + HIDDEN)
    assert hs.trainable() == [hs.scales, hs.lora] and hs.trainable_names() == ["scales", "lora"]
    assert torch.equal(logits(model, ids), ref)  # B = 0: exactly the original
    state = hs.lora_state()
    assert set(state) == {f"{i}.{p}.{m}" for i in range(N_LAYERS) for p in ("attn", "mlp") for m in "AB"}
    assert state["0.attn.A"].shape == (4, HIDDEN) and state["0.mlp.A"].shape == (4, INTER)
    assert state["0.mlp.B"].shape == (HIDDEN, 4) and not state["0.mlp.B"].any() and state["0.mlp.A"].any()
    hs.set_lora(random_deltas(hs, 4))
    assert not torch.allclose(logits(model, ids), ref)
    hs.detach()
    layer = model.get_decoder().layers[0]
    assert not layer.self_attn.o_proj._forward_hooks and not layer.mlp.down_proj._forward_hooks
    assert torch.equal(logits(model, ids), ref)


@pytest.mark.parametrize("skip", [[], [1, 3]])
def test_deltas_follow_the_reference_formula_on_merged_weights(family, tiny, ids, skip):
    reference = copy.deepcopy(tiny)  # untouched copy; the test merges B A into it by hand
    hs = healed(tiny, skip, channel=True)
    state = hs.lora_state()
    with torch.no_grad():
        for i, layer in enumerate(reference.get_decoder().layers):
            layer.self_attn.o_proj.weight += state[f"{i}.attn.B"] @ state[f"{i}.attn.A"]
            layer.mlp.down_proj.weight += state[f"{i}.mlp.B"] @ state[f"{i}.mlp.A"]
    scales, channels = hs.effective_scales(), hs.effective_channel_scales()
    records = capture_layers(tiny, ids)
    for i, (rec, layer) in enumerate(zip(records, reference.get_decoder().layers)):
        with torch.no_grad():
            want = reference_layer(family, layer, rec["x"], rec["kw"], scales[i], i in skip, channels[i])
        torch.testing.assert_close(rec["out"], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fam", FAMILIES)
def test_fold_merges_the_deltas_and_stock_transformers_loads_the_export(fam, tmp_path, ids):
    model = make_model(fam, rms_norm_eps=1e-30)  # eps ~ 0: the residual scales' epsilon effect does not enter
    hs = healed(model, skip=[1], s_ones=fam == "olmo2")
    ref = logits(model, ids)
    assert rel(ref, logits(fold_model(hs), ids)) <= 1e-5
    out = hc.export(hs, tmp_path / "hf", format="hf", tokenizer=make_tokenizer())
    stock = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    got = logits(stock, ids)
    assert rel(ref, got) <= 1e-4 and torch.equal(ref.argmax(-1), got.argmax(-1))


def test_merge_and_unload_folds_the_deltas_into_a_plain_model(ids):
    model = make_model("llama", rms_norm_eps=1e-30)
    hs = healed(model, skip=[2])
    ref = logits(model, ids)
    merged = hs.merge_and_unload()
    assert hc.handle_of(model) is None and not model.get_decoder().layers[0].mlp.down_proj._forward_hooks
    assert rel(ref, logits(merged, ids)) <= 1e-5


def test_in_thread_runs_given_deltas_and_the_teacher_runs_none(ids):
    model = make_model("llama")
    original = logits(model, ids)
    hs = healed(model, skip=[1])
    changed = logits(model, ids)
    with hs.in_thread():  # the KL teacher: the original model even though the handle has deltas
        torch.testing.assert_close(logits(model, ids), original, atol=1e-6, rtol=0)
    state, scales, channels = hs.lora_state(), hs.effective_scales(), hs.effective_channel_scales()
    other = hc.attach(make_model("llama"))  # a fresh handle on a copy of the same weights, rank 0
    with other.in_thread([1], scales, channels, lora=state):
        torch.testing.assert_close(logits(other.model, ids), changed, atol=1e-6, rtol=0)
    with pytest.raises(HopscotchError, match="in_thread"):
        with hs.per_row([([1], None), ([], None)]):
            pass


def test_bf16_activations_stay_bf16_with_float32_deltas(ids):
    model = make_model("llama", dtype=torch.bfloat16)
    hs = healed(model, skip=[1])
    assert hs.lora.dtype == torch.float32
    out = model(ids).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_adapter_roundtrip_and_mismatches_are_one_clear_error(tmp_path, ids):
    model = make_model("llama")
    hs = healed(model, skip=[1], rank=2)
    ref = logits(model, ids)
    hs.save(tmp_path / "a", objective="kl")
    meta = json.loads((tmp_path / "a" / "hopscotch.json").read_text())
    assert meta["lora_rank"] == 2
    hs.detach()
    back = hc.load_adapter(model, tmp_path / "a", lora_rank=2)
    assert back.lora_rank == 2 and torch.equal(logits(model, ids), ref)
    back.detach()
    with pytest.raises(AdapterMismatchError, match="rank 2, but rank 8"):
        hc.load_adapter(model, tmp_path / "a", lora_rank=8)
    assert hc.handle_of(model) is None  # refused before attaching
    meta["lora_rank"] = 3
    (tmp_path / "a" / "hopscotch.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lora_rank 3"):
        hc.load_adapter(model, tmp_path / "a")
    assert hc.handle_of(model) is None
    # deltas of another shape (made for a model with wider MLPs) into this one: one clear error
    wide = hc.attach(make_model("llama", intermediate_size=96))
    with pytest.raises(lowrank.LoraError, match="another shape or rank"):
        hc.attach(make_model("llama")).set_lora(random_deltas(wide, 2))


def test_bad_ranks_and_unknown_modules_are_refused(monkeypatch):
    hs = hc.attach(make_model("llama"))
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(lowrank.LoraError, match="whole number"):
            hs.set_lora_rank(bad)
    with pytest.raises(lowrank.LoraError, match="at most 32"):
        hs.set_lora_rank(33)  # o_proj is 32 x 32
    hs.set_lora_rank(32)
    monkeypatch.setattr(type(hs.family.layer), "mlp_delta", None)
    with pytest.raises(lowrank.LoraError, match="does not know which modules"):
        hc.attach(make_model("llama")).set_lora_rank(2)


@pytest.fixture
def rows():
    return data.pack(examples([9, 14, 11, 7, 16, 12, 10, 8], seed=4), batch_tokens=30)


def kl_to(teacher, model, rows):
    total = 0.0
    for r in rows:
        with torch.no_grad():
            lp = torch.log_softmax(teacher(input_ids=r.input_ids, position_ids=r.position_ids).logits[0][r.positions]
                                   .double(), -1)
            lq = torch.log_softmax(model(input_ids=r.input_ids, position_ids=r.position_ids).logits[0][r.positions]
                                   .double(), -1)
        total += float((lp.exp() * (lp - lq)).sum(-1).sum())
    return total / sum(r.n_tokens for r in rows)


def test_training_the_deltas_fits_better_than_channels_alone(rows):
    out = {}
    for rank in (0, 4):
        model = make_model("llama")
        teacher = copy.deepcopy(model)
        hs = hc.attach(model).skip([1]).set_granularity("channel").set_lora_rank(rank)
        res = training.train_scales(hs, rows, (), training.TrainConfig(lr=3e-2, epochs=4, objective=Objective("kl"),
                                                                      lora_lr=1e-2))
        assert res.status == "done" and bool(res.lora) == bool(rank)
        if rank:
            assert res.lora["0.attn.B"].abs().sum() > 0  # B moved off zero
        out[rank] = kl_to(teacher, model, rows)
    assert out[4] < out[0]
