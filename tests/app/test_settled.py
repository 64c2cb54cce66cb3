"""Settled means settled: once the model is in and nothing runs, no page starts script runs on its own (no fragment
with run_every); while the model loads, or a background figure is computed, one polls."""

from __future__ import annotations

import streamlit as st
from helpers.apptest import settle, start, visit

PAGES = ["model", "selection", "scaling", "compare", "runs"]


def record_pollers(monkeypatch) -> list[float]:
    """The run_every of every fragment the script runs from now on ask for."""
    seen: list[float] = []
    real = st.fragment

    def fragment(func=None, *, run_every=None):
        if run_every is not None:
            seen.append(run_every)
        return real(func, run_every=run_every) if func is not None else real(run_every=run_every)

    monkeypatch.setattr(st, "fragment", fragment)
    return seen


def test_no_page_polls_once_the_model_is_in_and_nothing_runs(runs, world, monkeypatch):
    at = start()
    for page in PAGES:
        visit(at, page)
        settle(at)  # the page's background figures (singular values, drift view) are in
        pollers = record_pollers(monkeypatch)
        at.run()
        assert not at.exception, at.exception
        assert pollers == [], f"the {page} page polls with nothing running: run_every {pollers}"
        monkeypatch.undo()


def test_a_page_polls_while_a_background_figure_is_computed(runs, world, monkeypatch):
    """The check above can fail: the drift view in the making, or a model loading, does poll."""
    from app_pages import tasks

    at = start()
    visit(at, "compare")
    settle(at)
    gate = __import__("threading").Event()
    real = tasks.task

    def slow_task(key, fn, *args, **kwargs):  # the next drift measurement waits until the test lets it go
        def held(*a, **kw):
            gate.wait(30)
            return fn(*a, **kw)

        return real(key, held if key[0] == "drift" else fn, *args, **kwargs)

    monkeypatch.setattr(tasks, "task", slow_task)
    pollers = record_pollers(monkeypatch)
    skip = sorted(set(at.session_state["cmp_skip"]) ^ {0})
    at.session_state["cmp_skip"] = at.session_state["_kept_cmp_skip"] = skip
    at.run()
    gate.set()
    assert not at.exception, at.exception
    assert pollers, "no progress line polled while the drift view was computed"


def test_toggling_back_shows_the_kept_figure_without_building_it_again(runs, world):
    """A -> B -> A: the drift figures of A and B stay at their places with unchanged specs (the browser keeps
    them drawn); toggling back only changes which one shows (a style rule hides the other)."""
    from helpers.apptest import figure

    at = start()
    visit(at, "compare")
    settle(at)
    a = list(at.session_state["cmp_skip"])

    def specs():
        return {e.key: e.proto.spec for e in at.get("plotly_chart") if e.key.startswith("cmp_drift_fig")}

    def toggle(skip):
        at.session_state["cmp_skip"] = at.session_state["_kept_cmp_skip"] = skip
        at.run()
        settle(at)

    first = specs()
    slot_a = at.session_state["cmp_drift_slot"]
    toggle(sorted(set(a) ^ {0}))
    slot_b = at.session_state["cmp_drift_slot"]
    with_b = specs()
    assert slot_b != slot_a and len(with_b) == 2
    assert with_b[f"cmp_drift_fig{slot_a}"] == first[f"cmp_drift_fig{slot_a}"]  # A kept as it was
    toggle(a)
    back = specs()
    assert at.session_state["cmp_drift_slot"] == slot_a and back == with_b  # nothing rebuilt
    css = [h.value for h in at.html if "<style>" in h.value]
    assert css and f".st-key-cmp_drift_fig{slot_b}" in css[-1] and f"fig{slot_a}" not in css[-1]
    assert figure(at, f"cmp_drift_fig{slot_a}")["data"][0]["type"] == "bar"
    visit(at, "model")
    visit(at, "compare")  # a new visit: the browser holds nothing, only the shown figure is drawn
    settle(at)
    assert list(specs()) == ["cmp_drift_fig0"]
