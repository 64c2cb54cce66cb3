"""The Runs page's Benchmarks tab in-process (streamlit.testing.AppTest): the table and figure of a run's
benchmarks.json, the command line where a run has none, and the form that starts `hopscotch eval --benchmarks`
as a job (its command line captured, then once for real on the OLMES fixture)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("streamlit")
from helpers import ROOT
from helpers.apptest import figure, start, texts, visit, wait_job

from hopscotch_core import cli
from hopscotch_core.measure import benchmarks
from hopscotch_core.method.runs import read_json, write_json
from hopscotch_core.studio import jobs
from hopscotch_core.studio.runview import list_runs

FIXTURE = ROOT / "tests" / "assets" / "olmes"


@pytest.fixture
def olmes(monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_OLMES_DIR", str(FIXTURE))


def _copy(world, runs, name: str):
    d = runs / name
    shutil.copytree(world.example, d)
    (d / "benchmarks.json").unlink(missing_ok=True)
    write_json(d / "manifest.json", {**read_json(d / "manifest.json"), "name": name})
    return d


def _open(at, run_dir):
    at.selectbox(key="runs_pick").set_value(str(run_dir)).run()
    assert not at.exception, at.exception
    return at


def test_the_tab_shows_the_table_and_figure_of_benchmarks_json(runs, world, olmes):
    d = _copy(world, runs, "scored")
    assert cli.main(["eval", "--run", "scored", "--runs-dir", str(runs), "--benchmarks", "piqa,winogrande",
                     "--limit", "3"]) == 0
    raw = json.loads((d / "benchmarks.json").read_text())
    at = _open(visit(start(), "runs"), d)
    assert "accuracy kept = variant ÷ original on the same documents" in texts(at)
    (table,) = [f.value for f in at.dataframe if "acc_per_char" in f.value.columns]
    variants = list(raw["benchmarks"]["piqa"]["variants"])
    assert list(zip(table["benchmark"], table["variant"])) == [
        (b, v) for b in ("piqa", "winogrande", "average") for v in variants]
    for r in table.itertuples():
        f = (raw["average"] if r.benchmark == "average" else raw["benchmarks"][r.benchmark])["variants"][r.variant]
        assert r.acc_per_char == pytest.approx(f["acc_per_char"], abs=5e-4)
        ci = f.get("kept_ci")
        assert r.kept_ci == ("–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]")
    bars = [t for t in figure(at, "runs_bench")["data"] if t.get("xaxis", "x") == "x"]
    assert [t["name"] for t in bars] == variants
    for t in bars:
        assert t["x"] == ["piqa", "winogrande", "average"]
        want = [raw["benchmarks"][b]["variants"][t["name"]]["acc_per_char"] for b in ("piqa", "winogrande")]
        assert t["y"] == pytest.approx(want + [raw["average"]["variants"][t["name"]]["acc_per_char"]])
    assert [b for b in at.get("download_button") if b.key == "runs_bench_csv"]  # exportable like every figure
    assert "No benchmarks scored for this run yet" not in texts(at)


def test_a_run_without_benchmarks_gets_the_command_and_the_button_starts_the_eval_job(runs, world, olmes,
                                                                                     monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "start", lambda args, runs_dir, name, env=None, nproc=1:
                        started.append((args, runs_dir, name)) or {})
    d = _copy(world, runs, "plain")
    at = _open(visit(start(), "runs"), d)
    info = "\n".join(i.value for i in at.info)
    assert (f"`hopscotch eval --run plain --runs-dir {runs} --benchmarks olmes --limit 200 --shots 0` writes "
            "benchmarks.json") in info
    assert not [c for c in at.get("plotly_chart") if c.key == "runs_bench"]
    assert at.multiselect(key="runs_bench_names").value == list(benchmarks.OLMES)
    assert at.number_input(key="runs_bench_limit").value == 200 and at.radio(key="runs_bench_shots").value == 0
    at.multiselect(key="runs_bench_names").set_value(["piqa", "boolq"]).run()
    at.number_input(key="runs_bench_limit").set_value(50).run()
    assert f"hopscotch eval --run plain --runs-dir {runs} --benchmarks piqa,boolq --limit 50 --shots 0" in \
        [c.value for c in at.code]
    at.button(key="runs_bench_go").click().run()
    assert not at.exception, at.exception
    ((args, runs_dir, name),) = started
    assert args == ["eval", "--run", "plain", "--runs-dir", str(runs), "--benchmarks", "piqa,boolq", "--limit", "50",
                    "--shots", "0", "--progress-file"]
    assert str(runs_dir) == str(runs) and name == "plain.benchmarks"
    assert cli.build_parser().parse_args(args).benchmarks == "piqa,boolq"  # the CLI takes it as it is
    # without the benchmark files: refused before any job, with the line that installs them
    monkeypatch.delenv("HOPSCOTCH_OLMES_DIR")
    monkeypatch.setattr(benchmarks, "olmes_root", lambda: None)
    at.radio(key="runs_bench_shots").set_value(5).run()
    assert at.multiselect(key="runs_bench_names").value == ["piqa", "boolq"]
    at.button(key="runs_bench_go").click().run()
    assert not at.exception, at.exception
    assert len(started) == 1 and benchmarks.OLMES_INSTALL in at.error[0].value
    at.multiselect(key="runs_bench_names").set_value([]).run()
    assert at.button(key="runs_bench_go").disabled and "Pick at least one benchmark" in texts(at)


def test_a_bundled_example_has_no_form(runs, world, olmes):
    at = _open(visit(start(), "runs"), world.example)
    assert "No benchmarks scored for this run yet" in texts(at) and "read-only here" in texts(at)
    assert not [b for b in at.button if b.key == "runs_bench_go"]


@pytest.mark.subprocess
def test_the_benchmark_job_runs_from_the_app_and_its_table_appears(runs, world, olmes):
    d = _copy(world, runs, "live")
    at = _open(visit(start(), "runs"), d)
    at.multiselect(key="runs_bench_names").set_value(["arc_easy"]).run()
    at.number_input(key="runs_bench_limit").set_value(2).run()
    at.button(key="runs_bench_go").click().run()
    assert not at.exception, at.exception
    assert jobs.record(runs, "live.benchmarks")["command"][:3] == ["eval", "--run", "live"]
    s = wait_job(runs, "live.benchmarks")
    assert s["state"] == "exited", s
    at.run()
    assert not at.exception, at.exception
    assert "Benchmarks scored" in texts(at) and "benchmarks.json" in texts(at)
    raw = json.loads((d / "benchmarks.json").read_text())
    assert raw["benchmarks"]["arc_easy"]["docs"] == 2 and raw["benchmarks"]["arc_easy"]["doc_ids"] == [0, 1]
    bars = [t for t in figure(at, "runs_bench")["data"] if t.get("xaxis", "x") == "x"]
    assert [t["name"] for t in bars] == list(raw["benchmarks"]["arc_easy"]["variants"])
    assert [r["name"] for r in list_runs(runs)] == ["live"]  # the eval job is not a run of its own
