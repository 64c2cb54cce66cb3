"""The Streamlit app, in-process (streamlit.testing), on a tiny model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_model_page_shows_summary_and_generates(tiny_dir, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_MODEL", str(tiny_dir))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert [m.value for m in at.metric][:2] == ["4", "4 / 2"]
    at.multiselect[0].set_value([0, 2]).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    codes = [c.value for c in at.code]
    assert len(codes) == 2 and all(isinstance(c, str) for c in codes)
    assert "Skipped [0, 2]" in " ".join(m.value for m in at.markdown)


def test_bad_model_source_shows_an_error_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_MODEL", str(tmp_path / "missing"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.error and "could not be loaded" in at.error[0].value and "no model directory" in at.error[0].value
