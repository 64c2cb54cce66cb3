"""The app's take-away files in-process (streamlit.testing.AppTest): every figure on Selection, Scaling and Runs has
PNG / SVG / CSV download buttons, whose files are made only on click (Streamlit's deferred download; the callables
are caught here as Streamlit registers them and called as a click would), and the Runs page offers the open run's
HTML report. Same tiny world as tests/test_app.py.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("streamlit")
from helpers.apptest import figure, start, visit

from hopscotch_core.studio import figexport
from hopscotch_core.studio.report import report_figures
from hopscotch_core.studio.runview import RunView

CHARTS = {"selection": ["sel_elbow", "sel_heatmap"], "scaling": ["sc_loss", "sc_scalars"],
          "runs": ["runs_elbow", "runs_loss", "runs_elbows", "runs_fidelity"]}


@pytest.fixture
def deferred(monkeypatch):
    """file name -> the callable its download button registered (what Streamlit runs when the button is clicked)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    made: dict = {}
    real = MediaFileManager.add_deferred

    def spy(self, fn, mimetype, coordinates, file_name=None, **kw):
        made[file_name] = fn
        return real(self, fn, mimetype, coordinates, file_name=file_name, **kw)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    return made


def test_every_figure_has_png_svg_csv_downloads_made_on_click(runs, world, deferred):  # noqa: F811
    ex = RunView(world.example)
    stem = ex.manifest["name"]
    at = start()
    for page, keys in CHARTS.items():
        at = visit(at, page)
        buttons = {b.key: b for b in at.get("download_button")}
        for key in keys:
            assert [buttons[f"{key}_{f}"].label for f in ("png", "svg", "csv")] == ["PNG", "SVG", "CSV"], key
            assert not buttons[f"{key}_csv"].disabled
        if page == "selection":
            elbow = figure(at, "sel_elbow")["data"]
            heat = figure(at, "sel_heatmap")["data"]
    assert {f"{stem}-elbow.{f}" for f in ("png", "svg", "csv")} <= set(deferred)

    # CSV: the numbers the browser plots (the chart's own JSON), which are the run's round losses
    got = list(csv.DictReader(io.StringIO(deferred[f"{stem}-elbow.csv"]())))
    line = [r for r in got if r["trace"] == elbow[0]["name"]]
    assert [float(r["y"]) for r in line] == elbow[0]["y"] == list(ex.rounds()["loss"])
    assert [int(r["x"]) for r in line] == elbow[0]["x"] and [int(r["customdata"]) for r in line] == ex.selected
    cells = list(csv.DictReader(io.StringIO(deferred[f"{stem}-candidates-paper.csv"]())))
    plotted = {(x, y, z) for y, zs in zip(heat[0]["y"], heat[0]["z"]) for x, z in zip(heat[0]["x"], zs) if z == z}
    assert {(int(r["x"]), int(r["y"]), float(r["z"])) for r in cells if r["trace"] == "loss"} == plotted

    # the report of the open run
    html = deferred[f"{stem}-report.html"]()
    assert re.findall(r'data-key="([^"]+)"', html) == list(report_figures(world.example))
    assert html.count('class="plotly-graph-div"') == len(report_figures(world.example)) > 3

    if figexport.image_export_problem() is None:  # kaleido + chromium here: the images themselves
        png = deferred[f"{stem}-elbow.png"]()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        svg = ET.fromstring(deferred[f"{stem}-elbow.svg"]())
        assert svg.tag.endswith("svg") and "Elbow: best loss per removed block" in " ".join(svg.itertext())


def test_png_svg_are_disabled_with_the_fix_when_no_browser(runs, world, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    at = visit(start(), "selection")
    buttons = {b.key: b for b in at.get("download_button")}
    for fmt in ("png", "svg"):
        assert buttons[f"sel_elbow_{fmt}"].disabled
        assert "apt-get install chromium" in buttons[f"sel_elbow_{fmt}"].help
    assert not buttons["sel_elbow_csv"].disabled  # CSV needs no browser
