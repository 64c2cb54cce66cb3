"""report.py and `hopscotch report`: one self-contained HTML file per run with every figure the run's files allow
(the expected set is read here from the files themselves), "not available" lines for what a partial run lacks, and
a file that opens in Debian's chromium without errors with every figure drawn.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import ROOT

from hopscotch_core import cli

from hopscotch_core.studio import figexport
from hopscotch_core.studio.report import build_report, report_figures, write_report
from hopscotch_core.method.runs import RunError, read_json, write_json

EXAMPLES = [ROOT / "assets" / "example-run", ROOT / "assets" / "example-run-k4"]
REQUIRED = os.environ.get("HOPSCOTCH_REQUIRE_BROWSER") == "1"


def expected_keys(run: Path) -> list[str]:
    """The figures a run's files call for, in report order, from the files (not from RunView)."""
    kinds = {json.loads(x)["kind"] for x in (run / "scores.jsonl").read_text().splitlines() if x.strip()} \
        if (run / "scores.jsonl").is_file() else set()
    m = json.loads((run / "manifest.json").read_text())
    keys = ["elbow"] if (m.get("selection") or {}).get("rounds") or (run / "eval.json").is_file() else []
    keys += [k for kind, k in (("paper", "candidates"), ("shortlist", "shortlist")) if kind in kinds]
    keys += ["loss"] if (run / "metrics.jsonl").is_file() else []
    sets = sorted(d.name for d in run.glob("scales*") if any(d.glob("epoch_*.safetensors")))
    keys += ["scalars-" + ("hopscotch" if s == "scales" else s.removeprefix("scales-")) for s in sets]
    if (run / "eval.json").is_file():
        ev = json.loads((run / "eval.json").read_text())
        keys += ["fidelity"] + [f"mmd-{v}" for v in ev.get("layer_mmd", {})]
    elif (m.get("results") or {}).get("eval_loss_trained") is not None:
        keys += ["fidelity"]
    if (run / "benchmarks.json").is_file() and json.loads((run / "benchmarks.json").read_text()).get("benchmarks"):
        keys += ["benchmarks"]
    return keys


def figure_keys(html: str) -> list[str]:
    return re.findall(r'<figure class="hs-figure" data-key="([^"]+)"', html)


@pytest.mark.parametrize("run", EXAMPLES + ["world"], ids=["example-k7", "example-k4", "tiny"])
def test_the_report_holds_every_figure_and_table_of_a_run(run, world):
    run = world.example if run == "world" else run
    html = build_report(run)
    keys = expected_keys(run)
    assert figure_keys(html) == keys == list(report_figures(run))
    assert html.count('class="plotly-graph-div"') == len(keys)
    # self-contained: plotly.js inlined once, nothing fetched
    assert html.count("plotly.js v") >= 1 and html.count("<script>") == 2 + len(keys)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//", html)
    m = json.loads((run / "manifest.json").read_text())
    assert f"Hopscotch run: {m['name']}" in html and " ".join(str(b) for b in m["selected"]) in html
    for section in ("Results", "Selection", "Scale training", "Fidelity to the original model", "Benchmarks",
                    "Speed and memory", "Settings"):
        assert f"<h2>{section}</h2>" in html
    ev = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    for r in ev.get("rows", []):  # intervals as [low, high] in the fidelity table, when eval.json has them
        if r.get("nll_ci"):
            assert f"[{r['nll_ci'][0]:.4f}, {r['nll_ci'][1]:.4f}]" in html
    for d in ev.get("diffs", []):  # paired differences, ✱ where the interval excludes 0
        if d["b"] != "original" and d["metric"] == "nll":
            lo, hi = d["ci"]
            assert f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" ✱" if d["excludes_zero"] else "") in html
    if (run / "bench.json").is_file():
        rows = json.loads((run / "bench.json").read_text())["rows"]
        assert f"{rows[-1]['speedup_decode']:.4g}" in html and "Not available: no bench.json" not in html
    else:
        assert "Not available: no bench.json" in html
    # each figure carries its numbers as a CSV link: the elbow's is figure_csv of the same figure
    csv = figexport.figure_csv(report_figures(run)["elbow"])
    import base64

    assert base64.b64encode(csv.encode()).decode() in html


def test_a_partial_run_gets_not_available_lines(world, tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(world.example, run)
    for name in ("scores.jsonl", "metrics.jsonl", "baselines.json", "log.txt"):
        (run / name).unlink(missing_ok=True)
    for d in run.glob("scales*"):
        shutil.rmtree(d)
    shutil.rmtree(run / "adapter")
    m = read_json(run / "manifest.json")
    write_json(run / "manifest.json", {**m, "state": "running", "stage": "select", "selected": [], "selection": {},
                                       "results": {}, "timings": {}})
    html = build_report(run)
    assert figure_keys(html) == [] and report_figures(run) == {}
    for line in ("no selection round has finished yet", "no training epoch has finished yet",
                 "the run has not been evaluated yet", "no bench.json", "Not available: no benchmarks.json"):
        assert line in html
    only = tmp_path / "only-manifest"
    only.mkdir()
    shutil.copy(run / "manifest.json", only / "manifest.json")
    assert "Not available" in build_report(only)
    with pytest.raises(RunError, match="not a run directory"):
        build_report(tmp_path)


def test_the_report_shows_benchmarks_json_as_a_table_and_a_figure(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_OLMES_DIR", str(ROOT / "tests" / "assets" / "olmes"))
    runs = tmp_path / "runs"
    shutil.copytree(world.example, runs / "scored")
    (runs / "scored" / "benchmarks.json").unlink(missing_ok=True)
    assert "Not available: no benchmarks.json" in build_report(runs / "scored")
    assert cli.main(["eval", "--run", "scored", "--runs-dir", str(runs), "--benchmarks", "arc_easy,boolq",
                     "--limit", "3", "--variants", "hopscotch"]) == 0
    run = runs / "scored"
    html = build_report(run)
    keys = expected_keys(run)
    assert keys[-1] == "benchmarks" and figure_keys(html) == keys == list(report_figures(run))
    assert "<h2>Benchmarks</h2>" in html and "Not available: no benchmarks.json" not in html
    raw = json.loads((run / "benchmarks.json").read_text())
    section = html[html.index("<h2>Benchmarks</h2>"):html.index("<h2>Speed and memory</h2>")]
    rows = re.findall(r"<tr>(.*?)</tr>", section)
    cells = [c for c in (re.findall(r"<td>(.*?)</td>", r) for r in rows) if c]
    assert [(c[0], c[1]) for c in cells] == [(b, v) for b in ("arc_easy", "boolq", "average")
                                             for v in ("original", "hopscotch")]
    for c in cells:  # per char accuracy and kept with its interval, as the file has them (4 digits)
        f = raw["average" if c[0] == "average" else "benchmarks"]
        f = (f["variants"] if c[0] == "average" else f[c[0]]["variants"])[c[1]]
        assert float(c[5]) == pytest.approx(f["acc_per_char"], abs=5e-5)
        if f["kept"] is None:  # the original scored 0 there: no share to keep
            assert c[7] == c[8] == "–"
        else:
            lo, hi = f["kept_ci"]
            assert float(c[7]) == pytest.approx(f["kept"], abs=5e-5) and c[8] == f"[{lo:.4f}, {hi:.4f}]"
        assert c[2] == str(raw["benchmarks"][c[0]]["docs"] if c[0] != "average" else 6)
    fig = report_figures(run)["benchmarks"]
    import base64

    assert base64.b64encode(figexport.figure_csv(fig).encode()).decode() in section


def test_cli_report_writes_the_file_and_refuses_an_unknown_run(world, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(world.example, runs / "tiny")
    assert cli.main(["report", "--run", "tiny", "--runs-dir", str(runs)]) == 0
    out = runs / "tiny" / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    assert figure_keys(out.read_text()) == expected_keys(runs / "tiny")
    target = tmp_path / "elsewhere" / "r.html"
    assert cli.main(["report", "--run", str(runs / "tiny"), "--out", str(target)]) == 0  # a run folder works too
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert cli.main(["report", "--run", "nope", "--runs-dir", str(runs), "--out", str(tmp_path / "n.html")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no run named 'nope' in {runs}"
    assert cli.main(["report", "--run", str(tmp_path), "--out", str(tmp_path / "n.html")]) == 2
    assert "is not a run folder (no manifest.json in it)" in capsys.readouterr().err
    assert not (tmp_path / "n.html").exists()
    assert write_report(runs / "tiny", tmp_path) == tmp_path / "report.html"  # a folder as --out


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file() and not REQUIRED, reason="no /usr/bin/chromium")
def test_the_report_opens_in_chromium_with_every_figure_drawn(tmp_path):
    from helpers.appdriver import launch_browser, open_page
    from playwright.sync_api import sync_playwright

    run = EXAMPLES[0]
    path = write_report(run, tmp_path / "report.html")
    keys = expected_keys(run)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = open_page(browser, errors)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith(("file:", "data:"))
                    else None)
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function(f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {len(keys)}")
            drawn = page.evaluate("""Array.from(document.querySelectorAll('figure.hs-figure')).map(f => [
                f.dataset.key, f.querySelectorAll('svg.main-svg').length,
                f.querySelector('.plotly-graph-div')._fullData.length,
                f.querySelector('.plotly-graph-div').getBoundingClientRect().width])""")
            assert [d[0] for d in drawn] == keys
            assert all(n >= 1 and traces >= 1 and width > 300 for _, n, traces, width in drawn), drawn
            title = page.evaluate("document.querySelector('#fig-elbow .gtitle').textContent")
            objective = json.loads((run / "manifest.json").read_text())["settings"].get("objective", "ce")
            assert title == f"Elbow: best {'loss' if objective == 'ce' else objective} per removed block"
            # tables sort on a header click (numbers as numbers)
            table = page.locator("table.hs", has=page.locator("th", has_text="agreement")).first
            heads = [h.strip().rstrip(" ⇅") for h in table.locator("thead th").all_inner_texts()]
            table.locator("th", has_text=re.compile(r"^nll(?!_)")).click()
            col = heads.index("nll") + 1
            nll = [float(x) for x in table.locator(f"tbody tr td:nth-child({col})").all_inner_texts()]
            rows = json.loads((run / "eval.json").read_text())["rows"]
            lowest = min(r["nll"] for r in rows)
            assert nll == sorted(nll) and len(nll) == len(rows) and nll[0] == pytest.approx(lowest, abs=1e-4)
        finally:
            browser.close()
    assert not errors, errors
