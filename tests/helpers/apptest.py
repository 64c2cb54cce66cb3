"""Streamlit AppTest helpers for the app tests: a session with the model in, pages, figures, jobs, background work."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from hopscotch_core.studio import jobs

from . import ROOT

APP = str(ROOT / "app.py")


def start() -> AppTest:
    """A new session, run until the model (loaded in a thread of its own) is in."""
    at = AppTest.from_file(APP, default_timeout=90).run()
    assert not at.exception, at.exception
    return model_settled(at)


def model_settled(at: AppTest) -> AppTest:
    """Wait for a model load in flight and rerun, so the page shows the model or its error. (A failed load is
    retried on the next script run, so after a page switch it can be in flight again.)"""
    loading = at.session_state["model_loading"] if "model_loading" in at.session_state else None
    if loading is not None:
        loading.future.exception(timeout=120)  # waits; a failed load is shown by the rerun
        at.run()
        assert not at.exception, at.exception
    return at


def visit(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def _decode(obj):
    """Plotly's JSON keeps numeric arrays as base64 typed arrays ({"dtype", "bdata", "shape"}): back to lists."""
    if isinstance(obj, dict) and "bdata" in obj and "dtype" in obj:
        arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        if obj.get("shape"):
            arr = arr.reshape([int(n) for n in str(obj["shape"]).split(",")])
        return arr.tolist()
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def figure(at: AppTest, key: str) -> dict:
    (el,) = [e for e in at.get("plotly_chart") if e.key == key]
    return _decode(json.loads(el.proto.spec))


def texts(at: AppTest) -> str:
    return "\n".join(x.value for kind in ("markdown", "caption", "info", "warning", "error", "success")
                     for x in getattr(at, kind))


def wait_job(runs: Path, name: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = jobs.status(runs, name)
        if not s["alive"]:
            return s
        time.sleep(0.2)
    raise AssertionError(f"job {name} still running: {jobs.status(runs, name)}")


def settle(at: AppTest, timeout: float = 120) -> AppTest:
    """Wait for the page's background computations (tasks.task), then rerun: their figures are drawn."""
    from app_pages import tasks

    deadline = time.time() + timeout
    while tasks.pending():
        assert time.time() < deadline, "background computations still running"
        time.sleep(0.05)
    at.run()
    assert not at.exception, at.exception
    return at


def generations(at: AppTest, gguf: bool = False) -> list[str]:
    """The side-by-side generations shown (HTML): the transformers pair, or with `gguf` the llama.cpp pair."""
    return [h.value for h in at.html if "hopscotch-gen" in h.value and ("hopscotch-gguf" in h.value) == gguf]
