"""Fixtures of the app tests: one tiny world (model, finished run, examples) per module, and a fresh runs folder."""

from __future__ import annotations

import pytest
from helpers.studio_world import build


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.getbasetemp() / "studio")


@pytest.fixture
def runs(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_MODEL", str(world.model_dir))
    monkeypatch.setenv("HOPSCOTCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HOPSCOTCH_EXAMPLES", str(world.examples))
    return tmp_path / "runs"
