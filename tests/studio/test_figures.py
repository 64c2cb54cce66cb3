"""figures.py: each figure shows exactly the table it was drawn from."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from hopscotch_core.studio import figures

from hopscotch_core.measure import metrics
from hopscotch_core.studio.runview import RunView


@pytest.fixture(scope="module")
def run(world):
    return RunView(world.example, example=True)


def test_singular_value_heatmap_z_is_the_table_and_log_colour_keeps_hover_values():
    from helpers.models import make_model

    df = metrics.singular_values(make_model("llama"))
    table = df.pivot(index="layer", columns="matrix", values="sigma_max")
    fig = figures.singular_value_heatmap(df)
    hm = fig.data[0]
    assert list(hm.x) == list(dict.fromkeys(df["matrix"]))  # model order: q, k, v, o, gate, up, down
    assert list(hm.y) == [0, 1, 2, 3]
    np.testing.assert_allclose(np.asarray(hm.z), table[list(hm.x)].to_numpy())
    logfig = figures.singular_value_heatmap(df, log_color=True).data[0]
    np.testing.assert_allclose(np.asarray(logfig.z), np.log10(table[list(hm.x)].to_numpy()))
    np.testing.assert_allclose(np.asarray(logfig.customdata), table[list(hm.x)].to_numpy())  # hover: raw value
    assert "customdata" in logfig.hovertemplate


def test_elbow_points_are_the_round_losses_and_baselines_overlay(run):
    rounds = run.rounds()
    m = run.manifest
    assert [r["loss"] for r in m["selection"]["rounds"]] == list(rounds["loss"])
    fig = figures.elbow(rounds, run.overlay())
    line = fig.data[0]
    assert list(line.x) == [1, 2] and list(line.y) == list(rounds["loss"])
    assert list(line.customdata) == m["selected"]  # each point names the block removed
    names = [t.name for t in fig.data[1:]]
    orig = next(t for t in fig.data if t.name == "original (held-out)")
    assert set(orig.y) == {m["results"]["eval_loss_original"]}
    assert any(n.startswith("hopscotch trained") for n in names)
    assert any(n.startswith("attn-bi unscaled") for n in names) and any(n.startswith("random trained") for n in names)
    hs = next(t for t in fig.data if t.name.startswith("hopscotch trained"))
    assert list(hs.x) == [2] and list(hs.y) == [m["results"]["eval_loss_trained"]]


def test_candidate_heatmap_cells_are_scores_and_chosen_blocks_are_starred(run):
    scores, rounds = run.scores(), run.rounds()
    fig = figures.candidate_heatmap(scores, 4, rounds)
    z = np.asarray(fig.data[0].z, dtype=float)
    paper = scores[scores["kind"] == "paper"]
    assert z.shape == (2, 4)
    for r in paper.itertuples():
        assert z[r.round, r.candidate] == pytest.approx(r.loss)
    assert np.isnan(z).sum() == z.size - len(paper)  # not shortlisted / already removed: empty
    stars = fig.data[1]
    assert list(stars.x) == run.manifest["selected"] and list(stars.y) == [0, 1]
    assert stars.marker.symbol == "star"


def test_loss_curves_show_train_and_held_out_per_epoch(run):
    ep = run.epochs()
    fig = figures.loss_curves(ep)
    by_name = {t.name: t for t in fig.data}
    main = ep[ep["stage"] == "train"]
    assert list(by_name["hopscotch train"].y) == list(main["train_loss"])
    assert list(by_name["hopscotch held-out"].y) == list(main["eval_loss"])
    assert list(by_name["hopscotch train"].x) == [1, 2]
    assert "attn-bi held-out" in by_name and "random train" in by_name


def test_scalars_four_series_and_skipped_blocks_shaded(run):
    scales = run.scales("scales")
    fig = figures.scalars(scales, run.selected)
    assert [t.name for t in fig.data] == ["b_att", "s_att", "b_mlp", "s_mlp"]
    for c, t in enumerate(fig.data):
        np.testing.assert_allclose(list(t.y), scales[:, c].tolist())
    assert len([s for s in fig.layout.shapes if s.type == "rect"]) == len(run.selected)
    for b in run.selected:
        assert fig.data[0].y[b] == 0.0  # b_att of a skipped block


def test_layer_mmd_bars_and_fidelity_panels():
    fig = figures.layer_mmd([0.0, 0.1, 0.3, 0.2], skipped=[1])
    assert list(fig.data[0].y) == [0.0, 0.1, 0.3, 0.2]
    assert fig.data[0].marker.color[1] != fig.data[0].marker.color[0]
    table = pd.DataFrame([{"run": "a", "variant": "hopscotch", "nll": 1.0, "kl": 0.1, "agreement": 0.9},
                          {"run": "b", "variant": "hopscotch", "nll": 1.2, "kl": 0.2, "agreement": 0.8}])
    fig = figures.fidelity(table)
    assert len(fig.data) == 3 and [list(t.y) for t in fig.data] == [[1.0, 1.2], [0.1, 0.2], [0.9, 0.8]]
    el = figures.elbows({"a": pd.DataFrame({"n_removed": [1, 2], "loss": [1.0, 2.0], "removed": [3, 1]})})
    assert list(el.data[0].y) == [1.0, 2.0]


@pytest.mark.parametrize("make", [
    lambda: figures.singular_value_heatmap(pd.DataFrame(columns=["layer", "matrix", "sigma_max"])),
    lambda: figures.elbow(pd.DataFrame(), None),
    lambda: figures.candidate_heatmap(pd.DataFrame(columns=["round", "candidate", "kind", "loss"]), 4),
    lambda: figures.loss_curves(pd.DataFrame()),
    lambda: figures.scalars(torch.zeros(0)),
    lambda: figures.layer_mmd([]),
    lambda: figures.fidelity(pd.DataFrame()),
    lambda: figures.elbows({}),
])
def test_empty_inputs_give_an_empty_figure_with_a_note(make):
    fig = make()
    assert not fig.data
    (note,) = fig.layout.annotations
    assert note.text and note.xref == "paper" and not fig.layout.xaxis.visible


def test_elbow_switches_to_a_log_axis_when_a_baseline_is_far_off(run):
    assert figures.elbow(run.rounds(), run.overlay()).layout.yaxis.type != "log"
    far = pd.concat([run.overlay(), pd.DataFrame([{"label": "random", "method": "random", "scaled": True, "k": 2,
                                                    "loss": 100.0, "blocks": [0, 1]}])], ignore_index=True)
    assert figures.elbow(run.rounds(), far).layout.yaxis.type == "log"


def test_elbow_marks_the_suggested_k():
    from hopscotch_core.method import selection

    rounds = pd.DataFrame({"round": range(8), "removed": [3, 1, 4, 0, 5, 2, 6, 7], "n_removed": range(1, 9),
                           "loss": [0.5, 0.51, 0.52, 0.53, 0.63, 0.73, 0.83, 0.93]})
    k, why = selection.suggest_k(rounds)
    assert k == 4
    fig = figures.elbow(rounds)
    (star,) = [t for t in fig.data if (t.name or "").startswith("suggested k")]
    assert star.name == "suggested k = 4" and list(star.x) == [4] and list(star.y) == [0.53]
    assert list(star.hovertext) == [why]
    assert [(s.x0, s.line.dash) for s in fig.layout.shapes] == [(4, "dash")]  # the dashed vertical line
    assert list(fig.data[0].y) == list(rounds["loss"])  # the curve itself is unchanged
    for no_marker in (figures.elbow(rounds, knee=False), figures.elbow(rounds.iloc[:3]),
                      figures.elbow(rounds.assign(loss=0.5 + 0.1 * rounds["n_removed"]))):
        assert not any((t.name or "").startswith("suggested k") for t in no_marker.data)
        assert not no_marker.layout.shapes


def _with_intervals(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{**r, "run": "a"} for r in rows if r["variant"] != "original"])


def test_fidelity_error_bars_are_the_intervals_of_eval_json(tmp_path):
    """Each bar's error bar reaches exactly from the low to the high end of eval.json's 95% interval; a file from
    before the intervals draws plain bars; figure_table exports the ends as y_low / y_high."""
    from hopscotch_core.method.runs import write_json
    from hopscotch_core.studio import figexport

    rows = [{"variant": "original", "nll": 1.0, "kl": 0.0, "agreement": 1.0, "nll_ci": [0.9, 1.1],
             "kl_ci": [0.0, 0.0], "agreement_ci": [1.0, 1.0]},
            {"variant": "hopscotch", "nll": 1.25, "kl": 0.125, "agreement": 0.875, "nll_ci": [1.0, 1.75],
             "kl_ci": [0.0625, 0.25], "agreement_ci": [0.75, 0.9375]},
            {"variant": "random", "nll": 3.5, "kl": 2.0, "agreement": 0.25, "nll_ci": None, "kl_ci": [1.5, 2.5],
             "agreement_ci": [0.125, 0.5]}]
    d = tmp_path / "run"
    d.mkdir()
    write_json(d / "manifest.json", {"name": "run", "state": "done"})
    write_json(d / "eval.json", {"format_version": 1, "rows": rows})
    table = RunView(d).fidelity().assign(run="a")
    fig = figures.fidelity(table[table["variant"] != "original"])
    by = {(t.name, t.xaxis): t for t in fig.data}
    for (name, axis), metric in zip([(v, a) for v in ("hopscotch", "random") for a in ("x", "x2", "x3")],
                                    ["nll", "kl", "agreement"] * 2):
        t = by[(name, axis)]
        r = next(x for x in rows if x["variant"] == name)
        y = t.y[0]
        assert y == r[metric]
        if r[f"{metric}_ci"] is None:
            assert t.error_y.array is None  # the only bar of this trace has no interval
            continue
        assert y - t.error_y.arrayminus[0] == pytest.approx(r[f"{metric}_ci"][0], abs=1e-12)
        assert y + t.error_y.array[0] == pytest.approx(r[f"{metric}_ci"][1], abs=1e-12)
        assert list(t.customdata[0]) == pytest.approx(r[f"{metric}_ci"])
    got = figexport.figure_table(fig)
    row = got[(got["trace"] == "hopscotch") & (got["panel"] == "KL(original ‖ modified)")].iloc[0]
    assert (row["y_low"], row["y_high"]) == (0.0625, 0.25)
    assert "95% bootstrap" in fig.layout.title.text
    # an eval.json from before the intervals: plain bars, no error bars, nothing fails
    write_json(d / "eval.json", {"format_version": 1, "rows": [{k: v for k, v in r.items() if not k.endswith("_ci")}
                                                               for r in rows]})
    old = figures.fidelity(RunView(d).fidelity().assign(run="a"))
    assert all(t.error_y.array is None for t in old.data) and "y_low" not in figexport.figure_table(old).columns
    assert figures.error_bars([1.0, 2.0], [None, None]) is None
