"""What the app and the report show of benchmarks.json: runview.benchmark_table (one row per benchmark and variant,
then the averages) and figures.benchmarks (accuracy and accuracy kept, error bars from the intervals).

Expected values are computed here from the file's per-document 0/1 values (or from hand-made documents), not read
back through the code under test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import finished_run

from hopscotch_core import cli
from hopscotch_core.measure import benchmarks
from hopscotch_core.method.runs import write_json
from hopscotch_core.studio import figures, jobs
from hopscotch_core.studio.runview import (
    BENCHMARK_COLUMNS,
    RunView,
    benchmark_table,
    benchmarks_job,
    benchmarks_status,
    intervals_as_text,
)

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "olmes"


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    """The tiny finished run, scored by the CLI on two benchmarks of the OLMES fixture: its run folder."""
    root = finished_run(tmp_path_factory.mktemp("benchview"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOPSCOTCH_OLMES_DIR", str(FIXTURE))
        assert cli.main(["eval", "--run", "r", "--runs-dir", str(root / "runs"), "--benchmarks", "arc_easy,piqa",
                         "--limit", "4"]) == 0
    return root / "runs" / "r"


def _raw(run: Path) -> dict:
    return json.loads((run / "benchmarks.json").read_text())


def test_table_rows_are_the_files_figures_checked_against_its_per_document_values(scored):
    raw = _raw(scored)
    table = benchmark_table(RunView(scored).benchmarks())
    assert list(table.columns) == list(BENCHMARK_COLUMNS)
    variants = ["original", "hopscotch-unscaled", "hopscotch", "attn-bi-unscaled", "attn-bi", "shortgpt-unscaled",
                "shortgpt"]
    assert list(zip(table["benchmark"], table["variant"])) == [
        (b, v) for b in ("arc_easy", "piqa", "average") for v in variants]
    means = {}  # (benchmark, variant) -> (acc, acc_per_char), from the per-document 0/1 values
    for b in ("arc_easy", "piqa"):
        for v in variants:
            per = raw["benchmarks"][b]["per_doc"][v]
            assert len(per["acc"]) == 4
            means[b, v] = (float(np.mean(per["acc"])), float(np.mean(per["acc_per_char"])))
    for r in table.itertuples():
        if r.benchmark == "average":
            orig = sum(means[b, "original"][1] for b in ("arc_easy", "piqa"))
            mine = sum(means[b, r.variant][1] for b in ("arc_easy", "piqa"))
            assert r.docs == 8 and np.isnan(r.acc) and r.acc_ci is None and r.acc_per_char_ci is None
            assert r.acc_per_char == pytest.approx(mine / 2)
            assert r.kept == pytest.approx(mine / orig)  # the ratio of the macro means
            assert r.kept_ci == raw["average"]["variants"][r.variant]["kept_ci"]
            continue
        acc, per_char = means[r.benchmark, r.variant]
        f = raw["benchmarks"][r.benchmark]["variants"][r.variant]
        assert r.docs == 4 and r.acc == pytest.approx(acc) and r.acc_per_char == pytest.approx(per_char)
        assert (r.acc_ci, r.acc_per_char_ci, r.kept_ci) == (f["acc_ci"], f["acc_per_char_ci"], f["kept_ci"])
        assert r.acc_ci[0] <= r.acc <= r.acc_ci[1] and r.acc_per_char_ci[0] <= r.acc_per_char <= r.acc_per_char_ci[1]
        orig = means[r.benchmark, "original"][1]
        assert r.kept == pytest.approx(per_char / orig) and r.kept_ci[0] <= r.kept <= r.kept_ci[1]


def test_figure_bars_are_the_files_accuracies_and_error_bars_its_intervals(scored):
    raw = _raw(scored)
    fig = figures.benchmarks(benchmark_table(RunView(scored).benchmarks()))
    top = [t for t in fig.data if t.xaxis == "x"]
    bottom = [t for t in fig.data if t.xaxis == "x2"]
    variants = list(raw["benchmarks"]["arc_easy"]["variants"])
    assert [t.name for t in top] == variants and [t.name for t in bottom] == variants[1:]  # kept: not the original
    assert all(t.type == "bar" for t in fig.data) and fig.layout.barmode == "group"
    for panel, metric in ((top, "acc_per_char"), (bottom, "kept")):
        for t in panel:
            assert list(t.x) == ["arc_easy", "piqa", "average"]
            want = [raw["benchmarks"][b]["variants"][t.name][metric] for b in ("arc_easy", "piqa")]
            want.append(raw["average"]["variants"][t.name][metric])
            assert list(t.y) == pytest.approx(want)
            cis = [raw["benchmarks"][b]["variants"][t.name][f"{metric}_ci"] for b in ("arc_easy", "piqa")]
            cis.append(raw["average"]["variants"][t.name].get(f"{metric}_ci"))  # the average has kept_ci only
            e = t.error_y
            for y, lo_gap, hi_gap, ci in zip(t.y, e.arrayminus, e.array, cis):
                if ci is None:
                    assert lo_gap is None and hi_gap is None
                else:
                    assert (y - lo_gap, y + hi_gap) == pytest.approx(tuple(ci))
    assert [s.y0 for s in fig.layout.shapes if s.line.dash == "dash"] == [1.0]  # the original's kept, dashed
    assert figures.benchmarks(benchmark_table(None)).layout.annotations[0].text == "no benchmarks scored"


def _doc(i: int, label: int) -> benchmarks.Doc:
    return benchmarks.Doc(i, (("Q:", " a"), ("Q:", " b")), label)


def test_table_and_figure_keep_each_variant_apart():
    """Hand-made documents where each variant answers differently: the numbers are counted here."""
    docs = [_doc(i, 0) for i in range(4)]  # gold: choice 0
    right, wrong = [-1.0, -2.0], [-2.0, -1.0]
    lls = {"original": [right, right, right, wrong],        # 3 of 4
           "hopscotch": [right, right, wrong, wrong],       # 2 of 4, both also right for the original
           "hopscotch-unscaled": [right, wrong, wrong, wrong]}  # 1 of 4
    e1 = benchmarks.summarize(benchmarks.Benchmark("one", 0, docs, "hand"), lls)
    lls2 = {"original": [right, right, wrong, wrong], "hopscotch": [right, right, wrong, wrong],
            "hopscotch-unscaled": [wrong, wrong, wrong, wrong]}
    e2 = benchmarks.summarize(benchmarks.Benchmark("two", 0, docs, "hand"), lls2)
    res = {"format_version": 1, "benchmarks": {"one": e1, "two": e2}}
    res["average"] = benchmarks.average(res["benchmarks"])
    t = benchmark_table(res).set_index(["benchmark", "variant"])
    assert t.loc[("one", "original"), "acc_per_char"] == 0.75 and t.loc[("one", "hopscotch"), "acc"] == 0.5
    assert t.loc[("one", "hopscotch"), "kept"] == pytest.approx(0.5 / 0.75)
    assert t.loc[("one", "hopscotch-unscaled"), "kept"] == pytest.approx(0.25 / 0.75)
    assert t.loc[("two", "hopscotch"), "kept"] == pytest.approx(1.0)
    assert t.loc[("two", "hopscotch-unscaled"), "kept"] == 0.0
    assert t.loc[("average", "hopscotch"), "acc_per_char"] == pytest.approx((0.5 + 0.5) / 2)
    assert t.loc[("average", "hopscotch"), "kept"] == pytest.approx((0.5 + 0.5) / (0.75 + 0.5))
    assert t.loc[("average", "hopscotch-unscaled"), "kept"] == pytest.approx(0.25 / 1.25)
    fig = figures.benchmarks(benchmark_table(res))
    bars = {(tr.name, tr.xaxis): dict(zip(tr.x, tr.y)) for tr in fig.data}
    assert bars["original", "x"] == {"one": 0.75, "two": 0.5, "average": 0.625}
    assert bars["hopscotch-unscaled", "x"]["one"] == 0.25
    assert bars["hopscotch", "x2"]["one"] == pytest.approx(2 / 3)
    assert ("original", "x2") not in bars
    colours = {tr.name: (tr.marker.color, tr.marker.pattern.shape) for tr in fig.data}
    assert colours["hopscotch"][0] == colours["hopscotch-unscaled"][0]  # one colour per method,
    assert colours["hopscotch-unscaled"][1] == "/" and not colours["hopscotch"][1]  # the unscaled one hatched
    text = intervals_as_text(benchmark_table(res))
    row = text[(text["benchmark"] == "one") & (text["variant"] == "original")].iloc[0]
    lo, hi = e1["variants"]["original"]["acc_ci"]
    assert row["acc_ci"] == f"[{lo:.3f}, {hi:.3f}]" and row["kept_ci"] == "[1.000, 1.000]"
    assert text[text["benchmark"] == "average"]["acc_ci"].tolist() == ["–"] * 3


def test_a_run_without_benchmarks_gives_none_and_an_empty_table(scored, tmp_path):
    view = RunView(tmp_path)
    assert view.benchmarks() is None
    assert list(benchmark_table(view.benchmarks()).columns) == list(BENCHMARK_COLUMNS)
    assert len(benchmark_table(None)) == 0
    write_json(tmp_path / "benchmarks.json", {**_raw(scored), "format_version": 99})
    assert view.benchmarks() is None  # another format: not guessed at
    (tmp_path / "benchmarks.json").write_text("{not json")
    assert view.benchmarks() is None


def test_the_jobs_progress_comes_from_the_runs_progress_file(scored, monkeypatch):
    view = RunView(scored)
    runs_dir = scored.parent
    job = benchmarks_job(view)
    assert job == "r.benchmarks"
    real = jobs.status
    monkeypatch.setattr(jobs, "status", lambda d, n: {**real(d, n), "alive": True, "state": "running"})
    started = time.time() - 10
    jobs.job_file(runs_dir, job).parent.mkdir(exist_ok=True)
    write_json(jobs.job_file(runs_dir, job), {"name": job, "command": ["eval"], "pid": None,
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))})
    progress = scored / "progress.json"
    write_json(progress, {"step": 7, "total": 28, "stage": "eval: benchmarks", "time": time.time(),
                          "info": {"benchmark": "piqa", "variant": "hopscotch"}})
    s = benchmarks_status(view)
    assert (s["step"], s["total"], s["fraction"]) == (7, 28, 0.25) and s["info"]["variant"] == "hopscotch"
    # 7 steps in ~10 s (the record keeps whole seconds): 21 more at that pace take ~30 s
    assert 25 <= s["remaining_s"] <= 36
    write_json(progress, {"step": 3, "total": 4, "stage": "train", "time": time.time()})  # another stage's
    assert benchmarks_status(view)["fraction"] is None
    write_json(progress, {"step": 3, "total": 4, "stage": "eval: benchmarks", "time": started - 60})  # an older job's
    assert benchmarks_status(view)["fraction"] is None
    progress.unlink()
    jobs.job_file(runs_dir, job).unlink()
