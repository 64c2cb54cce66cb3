"""Greedy selection picks the redundant block; modes, resume, baselines, bad settings."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT
from helpers.models import make_model, make_tokenizer
from helpers.models import PROMPTS

import hopscotch_core as hc
from hopscotch_core.method import data, selection

REDUNDANT = 2


@pytest.fixture
def setup():
    model = make_model("llama", num_hidden_layers=6)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):  # attention matters in every block but one ...
            layer.self_attn.o_proj.weight.mul_(0.0 if i == REDUNDANT else 4.0)  # ... whose output is zero
    # self-distillation data, as the method uses: the model's own greedy answers
    answers = data.generate_answers(model, make_tokenizer(), PROMPTS, max_new_tokens=12)
    rows = data.pack(data.build_examples(answers), batch_tokens=64)
    return model, hc.attach(model), rows


@pytest.mark.parametrize("mode,by", [("paper", "bi"), ("fast", "bi"), ("fast", "loss")])
def test_selection_removes_the_redundant_block_first(setup, mode, by):
    model, hs, rows = setup
    records = []
    sel = selection.greedy_select(hs, rows, selection.SelectConfig(k=2, mode=mode, shortlist=2, shortlist_by=by),
                                  on_score=records.append)
    assert sel.selected[0] == REDUNDANT and len(sel.selected) == 2 and sel.status == "done"
    paper = [r for r in records if r["kind"] == "paper"]
    assert len(paper) == (6 + 5 if mode == "paper" else 2 + 2)
    assert {r["candidate"] for r in paper if r["round"] == 1} <= set(range(6)) - {REDUNDANT}
    assert hs.skipped == () and torch.equal(hs.scales.detach(), torch.ones(6, 4))


def test_stopped_selection_resumes_to_the_same_result(setup):
    model, hs, rows = setup
    cfg = selection.SelectConfig(k=3, mode="paper")
    full_records = []
    full = selection.greedy_select(hs, rows, cfg, on_score=full_records.append)
    part = []
    stopped = selection.greedy_select(hs, rows, cfg, on_score=part.append, should_stop=lambda: len(part) >= 8)
    assert stopped.status == "stopped" and len(part) == 8
    rest = []
    resumed = selection.greedy_select(hs, rows, cfg, done=part, on_score=rest.append)
    assert resumed.selected == full.selected and len(part) + len(rest) == len(full_records)
    assert [r["loss"] for r in part + rest] == [r["loss"] for r in full_records]


def test_threshold_stops_early(setup):
    _, hs, rows = setup
    sel = selection.greedy_select(hs, rows, selection.SelectConfig(k=3, threshold=-1.0))
    assert sel.status == "threshold" and sel.selected == []


@pytest.mark.parametrize("cfg,match", [
    (selection.SelectConfig(k=6), "choose 1 <= k < 6"),
    (selection.SelectConfig(k=0), "choose 1 <= k"),
    (selection.SelectConfig(k=2, mode="magic"), "unknown mode"),
    (selection.SelectConfig(k=2, mode="fast", shortlist_by="vibes"), "unknown shortlist ranking"),
])
def test_bad_settings(setup, cfg, match):
    _, hs, rows = setup
    with pytest.raises(selection.SelectionError, match=match):
        selection.greedy_select(hs, rows, cfg)


def test_baselines(setup):
    model, hs, rows = setup
    att, lay = selection.block_influence(hs, rows)
    assert att[REDUNDANT] == pytest.approx(0.0, abs=1e-6) and min(att) == att[REDUNDANT]
    assert all(-1e-6 <= v <= 2 for v in att + lay)
    bi = selection.baseline_blocks("attn-bi", hs, rows, k=2)
    assert bi["attention"][0] == REDUNDANT and bi["mlp"] == []
    sg = selection.baseline_blocks("shortgpt", hs, rows, k=2)
    assert sg["attention"] == sg["mlp"] and len(sg["attention"]) == 2
    r1 = selection.baseline_blocks("random", hs, rows, k=3, seed=5)
    assert r1 == selection.baseline_blocks("random", hs, rows, k=3, seed=5) and len(set(r1["attention"])) == 3
    one = selection.baseline_blocks("one-round", hs, rows, k=2)
    assert one["attention"][0] == REDUNDANT and len(one["scores"]) == 6
    with pytest.raises(selection.SelectionError, match="unknown baseline"):
        selection.baseline_blocks("nope", hs, rows, k=2)


# ------------------------------------------------------------------------------------------------- elbow knee
def curve(loss):
    import pandas as pd

    return pd.DataFrame({"n_removed": range(1, len(loss) + 1), "loss": loss, "removed": range(len(loss))})


def test_suggest_k_finds_a_known_elbow():
    import numpy as np

    x = np.arange(1, 9)
    flat_then_steep = np.where(x <= 4, 0.5 + 0.01 * (x - 1), 0.53 + 0.1 * (x - 4))  # bends at k = 4
    k, why = selection.suggest_k(curve(flat_then_steep))
    assert k == 4 and "Kneedle" in why
    assert "from k = 1 to 4 the loss rises 0.01 per removed block, after k = 4 0.1 per block" in why
    k, _ = selection.suggest_k(curve(flat_then_steep)[::-1])  # row order does not matter
    assert k == 4
    # the Kneedle difference curve by hand for the example run's rounds: k is where d = k_norm - loss_norm peaks

    from hopscotch_core.studio.runview import RunView

    rounds = RunView(ROOT / "assets" / "example-run").rounds()  # the bundled run
    y = rounds["loss"].to_numpy()
    n = len(y)
    d = (np.arange(n) / (n - 1)) - (y - y.min()) / (y.max() - y.min())
    # the documented rule: a local maximum of d is a knee when d later falls more than one k-step (1 / (n - 1))
    # below it before the next local maximum; the first knee wins
    peaks = [i for i in range(1, n - 1) if d[i] >= d[i - 1] and d[i] > d[i + 1]]
    knees = [i for a, i in enumerate(peaks)
             if any(d[j] < d[i] - 1 / (n - 1) for j in range(i + 1, min((peaks[a + 1:] or [n])[0] + 1, n)))]
    want = int(rounds["n_removed"].iloc[knees[0]]) if knees else None
    got, why = selection.suggest_k(rounds)
    assert got == want, (got, want, why)
    if want is None:  # the default run's curve bends too little (its losses rise by 0.02-0.05 a round)
        assert why.startswith("no suggested k")


def test_suggest_k_says_why_there_is_none():
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.arange(1, 9)
    cases = {
        "3 rounds so far": [0.5, 0.6, 0.9],              # too short
        "rises about evenly": 0.5 + 0.1 * x,             # a straight line
        "about evenly ": 0.5 + 0.1 * x + rng.normal(0, 0.005, 8),  # and a noisy one
        "rises fastest at the start": np.log(x),         # concave: the first removals hurt most
        "does not change": np.full(8, 0.7),
    }
    for expected, loss in cases.items():
        k, why = selection.suggest_k(curve(list(loss)))
        assert k is None and expected.strip() in why and why.startswith("no suggested k")
    assert selection.suggest_k(None)[0] is None and "0 rounds" in selection.suggest_k(curve([]))[1]
