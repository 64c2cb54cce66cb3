"""The bundled example runs (assets/) are what `hopscotch run` does today, and the run-time estimate's reference
costs are the default run's own stage times."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hopscotch_core.method import estimate
from hopscotch_core.method.settings import RunSettings


EXAMPLES = Path(__file__).resolve().parents[2] / "assets"


@pytest.mark.parametrize("run", ["example-run-k4", "example-run"])
def test_the_bundled_example_runs_use_todays_defaults(run):
    """What the app opens on is what `hopscotch run` does now: the default settings but k and the baselines, every
    stage done, eval.json with its intervals."""
    m = json.loads((EXAMPLES / run / "manifest.json").read_text())
    s = RunSettings.from_manifest(m["settings"])
    assert dataclasses.replace(s, k=4, baselines=[]) == RunSettings(k=4)
    assert m["state"] == "done" and len(m["selected"]) == s.k
    ev = json.loads((EXAMPLES / run / "eval.json").read_text())
    trained = next(r for r in ev["rows"] if r["variant"] == "hopscotch")
    assert trained["attention"] == m["selected"] and ev["prompts"] == 32
    for key in ("nll", "kl", "agreement"):
        low, high = trained[f"{key}_ci"]
        assert low <= trained[key] <= high and low < high


def test_reference_costs_are_the_reference_runs():
    """REFERENCE (the estimate's per-pass costs) are the reference run's stage times (the default command on a
    quiet 2-core CPU, before the final training read extra prompts), recomputed here by hand; and the bundled k = 4
    run, remade from that run, carries its first stages' times unchanged."""
    ref = estimate.REFERENCE_RUN
    t, slots = ref["timings"], 288
    assert estimate.REFERENCE["params"] == ref["model"]["params"]
    # by hand: answers for 32 + 32 prompts; the teacher (one pass over the 32 calibration prompts) and the held-out
    # evaluation (3 passes over the 32 held-out ones) are forward passes
    assert estimate.REFERENCE["costs"]["gen"] == pytest.approx(t["generate"] / (64 * slots), rel=0.01)
    assert estimate.REFERENCE["costs"]["fwd"] == pytest.approx((t["teacher"] + t["evaluate"]) / (4 * 32 * slots),
                                                               rel=0.01)
    assert estimate.REFERENCE["costs"]["train"] == pytest.approx(estimate.costs_from_manifest(ref)["train"], rel=0.01)
    # the estimate of that run prices it at what it took (it is fitted to it: a check of the arithmetic)
    done = sum(t[st] for st in estimate.ORDER if st != "baselines")
    priced = sum(estimate.estimate(RunSettings.from_manifest(ref["settings"]), 30).values()) - \
        estimate.estimate(RunSettings.from_manifest(ref["settings"]), 30)["baselines"]
    assert priced == pytest.approx(done, rel=0.1)
    m = json.loads((EXAMPLES / "example-run-k4" / "manifest.json").read_text())
    assert m["timings"]["select"] == pytest.approx(t["select"], abs=60)  # read back, not rescored
    assert m["selected"] == [25, 6, 7, 29] and m["model"]["params"] == ref["model"]["params"]
