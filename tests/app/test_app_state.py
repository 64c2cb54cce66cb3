"""The app's shared modules outside a page: the task pool held by st.cache_resource, prompts cached per file
version, uploads written only when they change, and the session keys app.py and the pages share."""

from __future__ import annotations

import importlib
import json
import os

from app_pages import forms, state, tasks


def test_the_task_pool_outlives_a_reimport_of_its_module():
    before = tasks.pool()
    importlib.reload(tasks)  # Streamlit re-imports a changed module: the pool and its tasks stay
    assert tasks.pool() is before


def test_prompts_are_read_again_only_when_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "one"}) + "\n")
    calls = []
    real = __import__("hopscotch_core.method.data", fromlist=["load_prompts"]).load_prompts
    monkeypatch.setattr("hopscotch_core.method.data.load_prompts", lambda *a: calls.append(a) or real(*a))
    assert [r["prompt"] for r in forms.load_prompts(str(path), None)] == ["one"]
    assert [r["prompt"] for r in forms.load_prompts(str(path), None)] == ["one"] and len(calls) == 1
    path.write_text(json.dumps({"prompt": "one"}) + "\n" + json.dumps({"prompt": "two"}) + "\n")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert [r["prompt"] for r in forms.load_prompts(str(path), None)] == ["one", "two"] and len(calls) == 2


def test_an_upload_is_written_only_when_its_content_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_RUNS", str(tmp_path / "runs"))

    class Upload:
        def __init__(self, data: bytes):
            self.name, self.data = "../x.jsonl", data

        def getvalue(self) -> bytes:
            return self.data

    path = forms.save_upload(Upload(b"a"))
    assert path == (tmp_path / "runs" / forms.UPLOADS / "x.jsonl").resolve() and path.read_bytes() == b"a"
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9,) * 2)
    assert forms.save_upload(Upload(b"a")).stat().st_mtime_ns == stamp - 10**9  # same content: left alone
    assert forms.save_upload(Upload(b"bb")).read_bytes() == b"bb"


def test_session_keys_are_named_once():
    keys = [state.MODEL, state.MODEL_ERROR, state.MODEL_LOADING, state.MODEL_KEY, state.MODEL_STAMP,
            state.MODEL_SOURCE, state.MODEL_DEVICE, state.MODEL_DTYPE, state.RUN, state.RUN_NEXT, state.KEPT_RUN]
    assert len(set(keys)) == len(keys)
    app = (state.ROOT / "app.py").read_text()
    for literal in ('"model"', '"model_loading"', '"run_next"', '"_kept_run"'):
        assert f"session_state[{literal}]" not in app and f"session_state.get({literal}" not in app
