"""Shared fixtures: tiny random models of every supported family (helpers/models.py), the embedded model, offline."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.models import FAMILIES, VOCAB, make_model, make_tokenizer

@pytest.fixture
def tiny_dir(tmp_path):
    """A saved tiny llama with a tokenizer: a model directory load_model accepts."""
    model = make_model("llama")
    model.save_pretrained(tmp_path / "tiny-llama")
    make_tokenizer().save_pretrained(tmp_path / "tiny-llama")
    return tmp_path / "tiny-llama"


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    return make_model(family)


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(3, VOCAB, (2, 12))


@pytest.fixture(scope="session")
def default_model():
    """The embedded SmolLM2-135M-Instruct (slow tests only)."""
    import hopscotch_core as hc

    return hc.load_model("default", device="cpu")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the answers runs share (method/data.AnswerCache) go to a folder of this test, not the user's cache
    monkeypatch.setenv("HOPSCOTCH_ANSWERS_DIR", str(tmp_path_factory.mktemp("answers")))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
