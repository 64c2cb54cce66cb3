"""Adapter artifact: scales.safetensors + hopscotch.json round trip, and every way it can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import N_LAYERS, make_model
from safetensors.torch import save_file

import hopscotch_core as hc


@pytest.fixture
def saved(tmp_path):
    model = make_model("qwen2")
    hs = hc.attach(model)
    torch.manual_seed(2)
    hs.set_scales(torch.rand(N_LAYERS, 4) + 0.5).skip([3, 1])
    hs.save(tmp_path / "ad")
    return model, hs, tmp_path / "ad"


def test_round_trip_onto_a_fresh_copy(saved, ids):
    model, hs, path = saved
    meta = json.loads((path / "hopscotch.json").read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "adapter" and meta["skipped"] == [3, 1]
    assert meta["base"]["num_layers"] == N_LAYERS and meta["base"]["model_type"] == "qwen2"
    with torch.no_grad():
        expected = model(ids).logits
    other = make_model("qwen2")  # same seed: the same weights
    hs2 = hc.load_adapter(other, path)
    assert hs2.skipped == (1, 3)
    assert torch.equal(hs2.scales.detach(), hs.effective_scales())
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, expected, atol=0, rtol=0)


def test_round_trip_onto_a_bf16_copy(saved):
    _, hs, path = saved
    hs2 = hc.load_adapter(make_model("qwen2", dtype=torch.bfloat16), path)
    assert hs2.scales.dtype == torch.float32 and torch.equal(hs2.scales.detach(), hs.effective_scales())


@pytest.mark.parametrize("other", [
    lambda: make_model("llama"),                      # another family
    lambda: make_model("qwen2", num_hidden_layers=6),  # another size
    lambda: make_model("qwen2", hidden_size=48),
    lambda: make_model("qwen2", seed=1),               # same architecture, other weights
])
def test_adapter_for_another_model_is_refused(saved, other):
    _, _, path = saved
    model = other()
    with pytest.raises(hc.AdapterMismatchError):
        hc.load_adapter(model, path)
    assert hc.handle_of(model) is None  # nothing half-applied


def test_missing_and_corrupt_artifacts(saved, tmp_path):
    model, hs, path = saved
    hs.detach()
    with pytest.raises(hc.ArtifactError, match="does not exist"):
        hc.load_adapter(model, tmp_path / "nope")
    (path / "scales.safetensors").rename(path / "x")
    with pytest.raises(hc.ArtifactError, match="scales.safetensors is missing"):
        hc.load_adapter(model, path)
    (path / "x").write_bytes(b"\x00garbage" * 10)
    (path / "x").rename(path / "scales.safetensors")
    with pytest.raises(hc.ArtifactError, match="corrupt"):
        hc.load_adapter(model, path)
    (path / "hopscotch.json").write_text("{not json")
    with pytest.raises(hc.ArtifactError, match="not valid JSON"):
        hc.load_adapter(model, path)
    assert hc.handle_of(model) is None


@pytest.mark.parametrize("tensor,match", [
    (torch.ones(N_LAYERS, 3), "expected float32"),
    (torch.ones(N_LAYERS + 1, 4), "expected float32"),
    (torch.ones(N_LAYERS, 4, dtype=torch.float64), "expected float32"),
    (torch.full((N_LAYERS, 4), float("nan")), "NaN"),
])
def test_bad_scales_in_artifact(saved, tensor, match):
    model, hs, path = saved
    hs.detach()
    save_file({"scales": tensor}, str(path / "scales.safetensors"))
    with pytest.raises(hc.ArtifactError, match=match):
        hc.load_adapter(model, path)


@pytest.mark.parametrize("edit,match", [
    ({"format_version": 99}, "format_version"),
    ({"kind": "compact"}, "not an 'adapter'"),
    ({"skipped": [N_LAYERS]}, "distinct block indices"),
    ({"skipped": [1, 1]}, "distinct block indices"),
])
def test_bad_metadata(saved, edit, match):
    model, hs, path = saved
    hs.detach()
    meta = json.loads((path / "hopscotch.json").read_text())
    (path / "hopscotch.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(hc.ArtifactError, match=match):
        hc.load_adapter(model, path)


def test_loading_onto_an_attached_model_is_refused(saved):
    model, hs, path = saved
    with pytest.raises(hc.HopscotchError, match="already"):
        hc.load_adapter(model, path)
    assert hc.handle_of(model) is hs
