"""studio/runview.py: a run directory read into the tables the app shows (finished, live, optional files)."""

from __future__ import annotations

import json
import shutil
import zipfile
from io import BytesIO

import pytest
import torch

from hopscotch_core.method.runs import read_json, write_json
from hopscotch_core.studio.runview import RunView, example_dirs


def test_runview_reads_a_finished_run(world):
    v = RunView(world.example, example=True)
    m = v.manifest
    assert list(v.rounds()["removed"]) == m["selected"]
    assert set(v.scale_sets()) == {"scales", "scales-attn-bi", "scales-random"} and v.scale_epochs() == [0, 1]
    assert v.scale_blocks("scales-attn-bi") == v.baselines()["attn-bi"]["attention"]
    ad = v.adapter()
    assert ad is not None and torch.equal(ad[0], v.scales("adapter"))
    names = zipfile.ZipFile(BytesIO(v.adapter_zip())).namelist()
    assert sorted(names) == ["example-run-adapter/hopscotch.json", "example-run-adapter/scales.safetensors"]
    fid = v.fidelity()
    assert list(fid["variant"])[:3] == ["original", "hopscotch", "hopscotch-unscaled"]
    assert len(v.prompts("eval")) == 4 and len(v.answers("eval")) == 4 and len(v.answers("calib")) == 8
    row = v.summary()
    assert row["example"] and row["state"] == "done" and row["loss_trained"] == m["results"]["eval_loss_trained"]
    assert example_dirs(world.examples) == [world.example] and example_dirs(world.example) == [world.example]
    assert "stage train: done" in v.log()


def test_runview_reads_a_live_run_and_optional_measurements(world, tmp_path):
    d = tmp_path / "live"
    shutil.copytree(world.example, d)
    m = read_json(d / "manifest.json")
    write_json(d / "manifest.json", {**m, "selection": None, "selected": [], "state": "running"})
    v = RunView(d)
    # during selection the rounds come from scores.jsonl: the finished round (the next one has started) only
    assert list(v.rounds()["removed"]) == m["selected"][:1]
    write_json(d / "eval.json", {"format_version": 1, "rows": [
        {"variant": "original", "method": "original", "scaled": False, "attention": [], "mlp": [], "k": 0,
         "nll": 1.0, "ppl": 2.7, "kl": 0.0, "agreement": 1.0},
        {"variant": "hopscotch", "method": "hopscotch", "scaled": True, "attention": [1, 2], "mlp": [], "k": 2,
         "nll": 1.5, "ppl": 4.5, "kl": 0.2, "agreement": 0.8, "exact_match": None}]})
    ov = v.overlay()
    assert list(ov["label"]) == ["original", "hopscotch"] and list(ov["loss"]) == [1.0, 1.5]
    assert v.eval_layer_mmd() == {}
    write_json(d / "eval.json", {**read_json(d / "eval.json"), "layer_mmd": {"hopscotch": [0.0, 0.5, 0.25, 0.1]}})
    assert v.eval_layer_mmd() == {"hopscotch": [0.0, 0.5, 0.25, 0.1]}
    assert list(v.fidelity()["variant"]) == ["original", "hopscotch"]
    assert v.bench() is None
    (d / "bench.json").write_text(json.dumps({"format_version": 1, "device": "cpu", "dtype": "float32",
                                              "rows": [{"variant": "original", "k": 0}]}))
    assert v.bench()["rows"][0]["variant"] == "original"
    (d / "eval.json").write_text("{not json")
    assert v.eval_rows() is None  # a damaged optional file is ignored, not fatal


@pytest.mark.parametrize("objective,weight", [("ce", 1.0), ("kl", 1.0), ("ce+kl", 0.5)])
def test_the_elbow_speaks_the_runs_objective(world, tmp_path, objective, weight):
    from hopscotch_core.studio import figures

    d = tmp_path / "obj"
    shutil.copytree(world.example, d)
    m = read_json(d / "manifest.json")
    write_json(d / "manifest.json", {**m, "settings": {**m["settings"], "objective": objective, "kl_weight": weight}})
    (d / "eval.json").unlink(missing_ok=True)
    v = RunView(d)
    res, ov = m["results"], v.overlay().set_index("label")
    want = {"ce": lambda t: res[f"eval_loss_{t}"], "kl": lambda t: res[f"eval_kl_{t}"],
            "ce+kl": lambda t: res[f"eval_loss_{t}"] + weight * res[f"eval_kl_{t}"]}[objective]
    assert ov.loc["hopscotch", "loss"] == pytest.approx(want("trained"))
    assert ov.loc["hopscotch-unscaled", "loss"] == pytest.approx(want("unscaled"))
    assert ("original" in ov.index) == (objective != "kl")  # KL of the original to itself is no point to plot
    fig = figures.elbow(v.rounds(), v.overlay(), **v.objective())
    title = fig.layout.yaxis.title.text
    assert ("KL" in title) == (objective != "ce") and ("NLL" in title) == (objective != "kl")
    marker = next(t for t in fig.data if t.name.startswith("hopscotch trained"))
    assert objective in marker.hovertemplate


def test_manifest_is_parsed_once_per_version_of_the_file_and_handed_out_as_a_copy(tmp_path, monkeypatch):
    import os

    from hopscotch_core.studio import runview as rv

    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"state": "selecting", "selected": [3]}))
    parsed = []
    real = rv.read_json
    monkeypatch.setattr(rv, "read_json", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    view = rv.RunView(run)
    first = view.manifest
    assert first == {"state": "selecting", "selected": [3]}
    first["selected"].append(9)  # a caller's edit stays with the caller
    assert view.manifest == {"state": "selecting", "selected": [3]} and len(parsed) == 1
    tmp = run / "manifest.json.tmp"  # a job replaces the file atomically, as runs.write_json does
    tmp.write_text(json.dumps({"state": "trained", "selected": [3, 5]}))
    os.replace(tmp, run / "manifest.json")
    assert view.manifest == {"state": "trained", "selected": [3, 5]} and len(parsed) == 2
    (run / "manifest.json").unlink()
    assert view.manifest == {}
