"""The Compare page puts the side-by-side answer in proportion with the run's measured share of answers kept."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from helpers.apptest import start, texts, visit

from hopscotch_core.method.runs import write_json


def test_compare_shows_how_often_the_runs_answers_survive(runs, world):
    f = world.example / "answers-kept.json"
    at = visit(start(), "compare")
    assert "is not measured yet" in texts(at) and "--tasks answers" in texts(at)
    write_json(f, {"probes": {"arithmetic": {"questions": 40, "variants": {
        "original": {"acc": 0.25, "acc_ci": [0.1, 0.4], "kept": 1.0, "kept_ci": [1.0, 1.0], "kept_of": 10},
        "hopscotch": {"acc": 0.2, "acc_ci": [0.1, 0.35], "kept": 0.7, "kept_ci": [0.4, 0.9], "kept_of": 10},
        "hopscotch-unscaled": {"acc": 0.1, "acc_ci": [0.0, 0.2], "kept": 0.3, "kept_ci": [0.1, 0.6],
                               "kept_of": 10}}}}})
    try:
        at = visit(start(), "compare")
        shown = texts(at)
        assert "How often answers survive" in shown
        assert "answers 10 correctly" in shown and "70% of those correctly (95% interval 40%–90%)" in shown
        at.toggle(key="cmp_scaled").set_value(False).run()  # unscaled: the unscaled share
        assert "30% of those correctly" in texts(at)
        at.button(key="cmp_none").click().run()  # another skip set: the run's figures no longer apply
        assert "How often answers survive" not in texts(at)
    finally:
        f.unlink()
