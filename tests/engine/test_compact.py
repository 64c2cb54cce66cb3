"""Compact models: attention weights of skipped blocks removed, same outputs, save/reload in one call."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import N_LAYERS, make_model
from helpers.models import left_padded_batch

import hopscotch_core as hc
from hopscotch_core.engine.scaling import RemovedBlock

SKIP = [0, 2]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def attached(family, seed=0):
    model = make_model(family, seed=seed)
    hs = hc.attach(model)
    torch.manual_seed(11)
    hs.set_scales(1 + 0.3 * torch.randn(N_LAYERS, 4)).skip(SKIP)
    return model, hs


@pytest.mark.parametrize("fold", [True, False])
def test_compact_equals_the_skipped_model(family, fold, ids):
    model, hs = attached(family)
    attn = sum(n_params(model.get_decoder().layers[i].self_attn) for i in SKIP)
    assert attn > 0
    with torch.no_grad():
        expected = model(ids).logits
        small = hs.compact(fold=fold)
        assert n_params(small) == n_params(model) - attn
        torch.testing.assert_close(small(ids).logits, expected, atol=1e-5, rtol=1e-5)
        ids2, mask = left_padded_batch()
        kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(small.generate(ids2, use_cache=True, **kw), small.generate(ids2, use_cache=False, **kw))
        assert torch.equal(small.generate(ids2, use_cache=True, **kw), model.generate(ids2, use_cache=True, **kw))
    # the original is untouched and still attached
    assert hc.handle_of(model) is hs and all(
        not isinstance(model.get_decoder().layers[i].self_attn, RemovedBlock) for i in SKIP)
    torch.testing.assert_close(model(ids).logits, expected, atol=0, rtol=0)


def test_fold_moves_b_scales_into_weights(ids):
    model, hs = attached("llama")
    small = hs.compact(fold=True)
    info = hc.compact_info(small)
    assert info.folded and info.skipped == tuple(SKIP)
    assert torch.all(info.scales[:, 2] == 1) and torch.all(info.scales[[1, 3], 0] == 1)
    assert torch.all(info.scales[SKIP, 0] == 0)
    layer, orig = small.model.layers[1], model.model.layers[1]
    b = float(hs.scales.detach()[1, 0])
    torch.testing.assert_close(layer.self_attn.o_proj.weight, orig.self_attn.o_proj.weight * b)
    torch.testing.assert_close(info.scales[:, [1, 3]], hs.effective_scales()[:, [1, 3]])


def test_compact_saves_and_reloads_in_one_call(family, tmp_path, ids):
    model, hs = attached(family)
    small = hs.compact()
    with torch.no_grad():
        expected = small(ids).logits
    hc.save_model(small, tmp_path / "small")
    files = {p.name for p in (tmp_path / "small").iterdir()}
    assert {"config.json", "model.safetensors", "hopscotch.json", "scales.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".py")) for f in files)
    meta = json.loads((tmp_path / "small" / "hopscotch.json").read_text())
    assert meta["kind"] == "compact" and meta["skipped"] == SKIP
    again, tok = hc.load_model(tmp_path / "small", device="cpu")
    assert tok is None  # none was saved
    assert n_params(again) == n_params(small)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, expected, atol=1e-6, rtol=0)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(again.generate(ids, use_cache=True, **kw), small.generate(ids, use_cache=True, **kw))


def test_compact_models_refuse_a_second_attach():
    _, hs = attached("llama")
    with pytest.raises(hc.HopscotchError, match="compacted"):
        hc.attach(hs.compact())


def test_compact_with_missing_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, hs = attached("llama")
    hc.save_model(hs.compact(), tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    victim = next(k for k in weights if "layers.1.mlp" in k)
    del weights[victim]
    save_file(weights, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hc.ArtifactError, match="missing weight"):
        hc.load_model(tmp_path / "m", device="cpu")


def test_compact_removes_whole_layers_and_reloads(tmp_path, ids):
    model, hs = attached("qwen3")
    hs.skip_mlp([2])
    mlp = n_params(model.get_decoder().layers[2].mlp)
    attn = sum(n_params(model.get_decoder().layers[i].self_attn) for i in SKIP)
    with torch.no_grad():
        expected = model(ids).logits
        small = hs.compact()
        assert n_params(small) == n_params(model) - attn - mlp
        torch.testing.assert_close(small(ids).logits, expected, atol=1e-5, rtol=1e-5)
    hc.save_model(small, tmp_path / "s")
    again, _ = hc.load_model(tmp_path / "s", device="cpu")
    assert hc.compact_info(again).skipped_mlp == (2,) and n_params(again) == n_params(small)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, expected, atol=1e-5, rtol=1e-5)
