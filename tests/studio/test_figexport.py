"""figexport.py: a figure's CSV holds exactly the numbers it plots (checked against the run files it was drawn from,
read here without RunView or pandas), and PNG/SVG come out of kaleido on Debian's chromium.

The image tests need kaleido and /usr/bin/chromium; they are skipped without them, except when
HOPSCOTCH_REQUIRE_BROWSER=1 (.ci/run sets it).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import struct
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from helpers import ROOT

from hopscotch_core.studio import figexport, figures

from hopscotch_core.measure import metrics
from hopscotch_core.errors import FigureExportError, HopscotchError
from hopscotch_core.studio.runview import RunView

EXAMPLE = ROOT / "assets" / "example-run"
REQUIRED = os.environ.get("HOPSCOTCH_REQUIRE_BROWSER") == "1"
_no_images = pytest.mark.skipif(figexport.image_export_problem() is not None and not REQUIRED,
                                reason=f"static images unavailable: {figexport.image_export_problem()}")


def images(fn):
    """PNG/SVG through kaleido in chromium: the browser marker, skipped where either is missing."""
    return pytest.mark.browser(_no_images(fn))


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def by_trace(text: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows(text):
        out.setdefault(r["trace"], []).append(r)
    return out


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ CSV
@pytest.mark.parametrize("run_dir", [EXAMPLE, "world"])
def test_elbow_csv_is_the_rounds_and_the_held_out_losses(run_dir, world):
    run_dir = world.example if run_dir == "world" else run_dir
    m = json.loads((run_dir / "manifest.json").read_text())
    view = RunView(run_dir)
    text = figexport.figure_csv(figures.elbow(view.rounds(), view.overlay()))
    assert text.splitlines()[0] == "trace,x,y,customdata,text"
    got = by_trace(text)
    line = got["selection (calibration, best candidate)"]
    rounds = m["selection"]["rounds"]
    assert [int(r["x"]) for r in line] == list(range(1, len(rounds) + 1))
    assert [float(r["y"]) for r in line] == [r["loss"] for r in rounds]  # every digit survives the CSV
    assert [int(r["customdata"]) for r in line] == [r["removed"] for r in rounds] == m["selected"]
    # the held-out points are the run's objective: NLL for ce; KL for kl (the original's own KL is 0: no point)
    key = "kl" if m["settings"].get("objective") == "kl" else "nll"
    if (run_dir / "eval.json").is_file():  # overlay from `hopscotch eval`
        ev = {r["variant"]: r for r in json.loads((run_dir / "eval.json").read_text())["rows"]}
        original, trained, unscaled = ev["original"][key], ev["hopscotch"][key], ev["hopscotch-unscaled"][key]
    else:  # the manifest's results name the NLL "loss"
        res, name = m["results"], "loss" if key == "nll" else "kl"
        original = res.get(f"eval_{name}_original")  # kl: none (the original's KL to itself)
        trained, unscaled = res[f"eval_{name}_trained"], res[f"eval_{name}_unscaled"]
    if key == "nll":
        assert {float(r["y"]) for r in got["original (held-out)"]} == {original}
    else:
        assert "original (held-out)" not in got
    (t,) = got["hopscotch trained (held-out)"]
    assert (int(t["x"]), float(t["y"])) == (len(m["selected"]), trained)
    assert t["customdata"] == ", ".join(str(b) for b in m["selected"])
    assert float(got["hopscotch unscaled (held-out)"][0]["y"]) == unscaled


def test_candidate_map_csv_has_one_row_per_scored_cell(world):
    view = RunView(EXAMPLE)
    fig = figures.candidate_heatmap(view.scores(), 30, view.rounds(), "paper", "loss")
    got = by_trace(figexport.figure_csv(fig))
    cells = {(int(r["x"]), int(r["y"]), float(r["z"])) for r in got["loss"]}  # a heatmap trace: named by its colour
    scores = jsonl(EXAMPLE / "scores.jsonl")
    assert cells == {(s["candidate"], s["round"], s["loss"]) for s in scores if s["kind"] == "paper"}
    assert len(got["loss"]) == len(cells)  # empty cells (not scored) are not rows
    m = json.loads((EXAMPLE / "manifest.json").read_text())
    assert [(int(r["x"]), int(r["y"])) for r in got["removed"]] == [(r["removed"], r["round"])
                                                                     for r in m["selection"]["rounds"]]


def test_log_colour_heatmap_keeps_the_real_value_as_customdata():
    from helpers.models import make_model

    df = metrics.singular_values(make_model("llama"))
    text = figexport.figure_csv(figures.singular_value_heatmap(df, log_color=True))
    got = rows(text)
    assert list(got[0]) == ["trace", "x", "y", "z", "customdata"] and len(got) == len(df)
    for r in got:
        sigma = float(df[(df["layer"] == int(r["y"])) & (df["matrix"] == r["x"])]["sigma_max"].iloc[0])
        assert float(r["customdata"]) == pytest.approx(sigma, rel=1e-12)
        assert float(r["z"]) == pytest.approx(math.log10(sigma), rel=1e-12)


def test_subplots_name_their_panel_and_scalars_and_losses_are_the_run_files(world):
    table = pd.DataFrame([{"run": "a", "variant": "hopscotch", "nll": 1.25, "kl": 0.125, "agreement": 0.875},
                          {"run": "b", "variant": "random", "nll": 3.5, "kl": 2.0, "agreement": 0.25}])
    got = rows(figexport.figure_csv(figures.fidelity(table)))
    assert list(got[0]) == ["trace", "panel", "x", "y"]
    panel = {(r["panel"], r["trace"], r["x"]): float(r["y"]) for r in got}
    assert panel[("held-out NLL", "hopscotch", "a")] == 1.25
    assert panel[("KL(original ‖ modified)", "random", "b")] == 2.0
    assert panel[("top-1 agreement", "random", "b")] == 0.25 and len(got) == 6

    from safetensors.torch import load_file

    view = RunView(world.example)
    last = sorted((world.example / "scales").glob("epoch_*.safetensors"))[-1]
    scales = load_file(str(last))["scales"].float()
    got = by_trace(figexport.figure_csv(figures.scalars(view.scales(), view.selected)))
    for c, name in enumerate(figures.SCALE_COLUMNS):
        assert [float(r["y"]) for r in got[name]] == pytest.approx(scales[:, c].tolist(), abs=0)
        assert [int(r["x"]) for r in got[name]] == list(range(scales.shape[0]))
    epochs = [r for r in jsonl(world.example / "metrics.jsonl") if r.get("stage") == "train"]
    got = by_trace(figexport.figure_csv(figures.loss_curves(view.epochs())))
    assert [float(r["y"]) for r in got["hopscotch held-out"]] == [r["eval_loss"] for r in epochs]
    assert [int(r["x"]) for r in got["hopscotch train"]] == [r["epoch"] + 1 for r in epochs]


def test_an_empty_figure_is_a_header_and_names_are_file_safe():
    assert figexport.figure_csv(figures.elbow(pd.DataFrame(), None)) == "trace,x,y\n"
    assert figexport.file_stem("default-k7 mmd/attn-bi (x)") == "default-k7-mmd-attn-bi-x"
    assert figexport.file_stem("  ") == "figure"
    fig = go.Figure(go.Bar(x=["a", "b"], y=np.array([1.5, np.nan])))
    assert rows(figexport.figure_csv(fig)) == [{"trace": "bar 0", "x": "a", "y": "1.5"},
                                               {"trace": "bar 0", "x": "b", "y": ""}]


# ------------------------------------------------------------------------------------------------ images
def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@images
def test_png_and_svg_of_a_run_figure():
    view = RunView(EXAMPLE)
    fig = figures.elbow(view.rounds(), view.overlay())
    t0 = time.perf_counter()
    png = figexport.figure_image(fig, "png")
    t1 = time.perf_counter()
    svg = figexport.figure_image(fig, "svg")
    t2 = time.perf_counter()
    assert len(png) > 10_000 and png_size(png) == (700 * figexport.PNG_SCALE, 420 * figexport.PNG_SCALE)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and root.get("width") == "700" and root.get("height") == "420"
    text = " ".join(t.strip() for t in root.itertext())
    assert "Elbow: best loss per removed block" in text and "attention blocks removed" in text
    paths = [e for e in root.iter() if e.tag.endswith("path") and (e.get("class") or "").startswith("js-line")]
    assert paths  # the elbow's line is drawn
    assert png_size(figexport.figure_image(fig, "png", width=300, height=200, scale=1)) == (300, 200)
    print(f"first PNG {t1 - t0:.2f} s (browser start included), SVG {t2 - t1:.2f} s")


@images
def test_one_browser_serves_every_thread_and_restarts_after_a_crash():
    from concurrent.futures import ThreadPoolExecutor

    figs = [figures.layer_mmd([0.1 * i, 0.2, 0.05], skipped=[1]) for i in range(4)]
    with ThreadPoolExecutor(4) as ex:
        svgs = list(ex.map(lambda f: figexport.figure_image(f, "svg"), figs))
    assert len(set(svgs)) == 4 and all(ET.fromstring(s).tag.endswith("svg") for s in svgs)
    proc = figexport._RENDERER._kaleido.subprocess  # the shared browser: killed as a crash would
    proc.kill()
    proc.wait()
    assert ET.fromstring(figexport.figure_image(figs[0], "svg")).tag.endswith("svg")
    assert figexport._RENDERER._kaleido.subprocess.pid != proc.pid
    figexport.close()
    assert not figexport._RENDERER.running


def test_missing_kaleido_or_browser_names_the_fix(monkeypatch):
    figexport.close()  # a running browser would be reused
    fig = figures.layer_mmd([0.1, 0.2])
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    assert "BROWSER_PATH" in figexport.image_export_problem()
    with pytest.raises(FigureExportError, match="apt-get install chromium") as e:
        figexport.figure_image(fig, "png")
    assert isinstance(e.value, HopscotchError) and "/nonexistent/chrome" in str(e.value)
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")  # executable, but not a browser
    with pytest.raises(FigureExportError, match="could not start the browser /bin/false"):
        figexport.figure_image(fig, "svg")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a))
    with pytest.raises(FigureExportError, match="pip install kaleido"):
        figexport.figure_image(fig, "png")
    with pytest.raises(ValueError, match="png, svg"):
        figexport.figure_image(fig, "gif")
    assert figexport.figure_csv(fig)  # CSV needs neither
