"""What the studio tests share: the tiny world (a tiny model, prompts, finished runs), built once per session."""

from __future__ import annotations

import pytest
from helpers.studio_world import build


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.getbasetemp() / "studio")
