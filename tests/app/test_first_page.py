"""The first page of a launch draws without torch: app.py's first script run on the Model page imports neither torch
nor transformers (the architecture and singular values come from the cards kept on disk), and the model's load
starts after the page is drawn, in its thread, and then comes in.

Runs in a fresh Python process (this one has torch loaded already): streamlit.testing's AppTest runs app.py there,
with Task.start (the model load's thread) wrapped to note which of torch / transformers were imported when it was
called, i.e. at the end of the first script run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from app_pages import tasks

seen = []
original = tasks.Task.start


def start(self):  # the end of a script run: record what was imported, then load as the app does
    seen.append(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    original(self)


tasks.Task.start = start
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1] + "/app.py", default_timeout=60)
at.session_state["model_device"] = "cpu"
at.run()
first = {"exception": [str(e.value) for e in at.exception], "seen": list(seen),
         "subheaders": [s.value for s in at.subheader], "charts": [c.key for c in at.get("plotly_chart")],
         "loading": at.session_state["model_loading"] is not None, "model": at.session_state["model"] is not None}
at.session_state["model_loading"].future.result(timeout=120)  # the load began after the page, and finishes
at.run()
print(json.dumps({"first": first, "then": {"exception": [str(e.value) for e in at.exception],
                                           "model": at.session_state["model"] is not None,
                                           "torch": "torch" in sys.modules}}))
"""


@pytest.mark.subprocess
def test_first_page_without_torch(world, tmp_path):
    import hopscotch_core as hc
    from hopscotch_core.measure import info, metrics

    cache = tmp_path / "cache"
    env = {**os.environ, "HOPSCOTCH_CACHE": str(cache), "HOPSCOTCH_MODEL": str(world.model_dir),
           "HOPSCOTCH_RUNS": str(tmp_path / "runs"), "HOPSCOTCH_EXAMPLES": str(world.examples),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    os.environ["HOPSCOTCH_CACHE"] = str(cache)  # the cards of a launch before: computed once from the model
    try:
        model, _ = hc.load_model(world.model_dir, device="cpu")
        summary = info.summary(model)
        metrics.singular_values(model)
    finally:
        del os.environ["HOPSCOTCH_CACHE"]
    assert len(list((cache / "derived").glob("*.json"))) == 2

    res = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    first = got["first"]
    assert first["exception"] == []
    assert first["seen"] == [[]]  # the first script run ended with neither torch nor transformers imported
    assert f"Architecture · {summary['family']}" in first["subheaders"]  # drawn from the disk cards
    assert first["charts"] == ["sv_heatmap"]
    assert first["loading"] and not first["model"]  # the load started after the page, not before
    assert got["then"] == {"exception": [], "model": True, "torch": True}


@pytest.mark.subprocess
def test_without_cards_the_page_waits_for_the_model(world, tmp_path):
    """No cards on disk (a model never seen): the first run still imports no torch; the page says the model is
    loading."""
    env = {**os.environ, "HOPSCOTCH_CACHE": str(tmp_path / "empty"), "HOPSCOTCH_MODEL": str(world.model_dir),
           "HOPSCOTCH_RUNS": str(tmp_path / "runs"), "HOPSCOTCH_EXAMPLES": str(world.examples),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["first"]["seen"] == [[]]
    assert got["first"]["charts"] == [] and got["first"]["loading"]
    assert got["then"] == {"exception": [], "model": True, "torch": True}
