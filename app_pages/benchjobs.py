"""The Runs page's Benchmarks tab: the open run's accuracy on multiple-choice benchmarks and accuracy kept (table and
figure from benchmarks.json), the form that scores them as a `hopscotch eval --benchmarks` job, and that job's
live line (progress, done, failed with its cause).

Streamlit glue only: the table is hopscotch_core.studio.runview's, the figure studio.figures', the command line
studio.commands', the job studio.jobs'.
"""

from __future__ import annotations

import streamlit as st

from app_pages import jobpanel, state, ui
from hopscotch_core.method import runs
from hopscotch_core.studio import commands, figures, jobs
from hopscotch_core.studio.runview import (
    RunView,
    benchmark_table,
    benchmarks_job,
    benchmarks_status,
    intervals_as_text,
)

DEFAULT_LIMIT = 200
WHAT = ("Accuracy on standard multiple-choice benchmarks, each choice scored by its log-likelihood (OLMES "
        "ranked-classification form); `acc_per_char` (the most likely choice per character is the gold one) is OLMES' "
        "primary metric; accuracy kept = variant ÷ original on the same documents; intervals: 95% bootstrap over "
        "the documents, paired for accuracy kept.")
ALIVE = "_bench_alive_"  # session-state prefix: whether a run's benchmark job was alive at the last look


def bench_status(run: RunView, key: str) -> None:
    """One line for the run's benchmark job: a progress bar (documents × variants scored) and a stop button while
    it runs, what it wrote, or why it failed. A full rerun when the job ends (the table above fills in)."""
    s = benchmarks_status(run)
    was = st.session_state.get(ALIVE + run.name, s["alive"])
    st.session_state[ALIVE + run.name] = s["alive"]
    if was and not s["alive"]:
        st.rerun()
    if s["alive"]:
        info = s.get("info") or {}
        step, total = s.get("step"), s.get("total")
        where = " · ".join(str(info[k]) for k in ("benchmark", "variant") if info.get(k))
        left = s.get("remaining_s")
        text = ("Scoring the benchmarks (a job: it goes on if you leave the page)"
                + (f": {step}/{total} documents × variants" if total else " ...") + (f" · {where}" if where else "")
                + (f" · about {jobpanel.fmt_duration(left)} left" if left is not None else ""))
        st.progress(s.get("fraction") or 0.0, text=text)
        if s["state"] != runs.STOPPING and st.button("Stop", key=f"{key}_stop",
                                                      help="Scored documents are kept: starting again continues"):
            jobs.stop(state.runs_dir(), benchmarks_job(run))
    elif s["state"] == runs.EXITED:
        last = (s.get("log") or "").splitlines()[-1:] or [""]
        st.success(f"Benchmarks scored — {last[0]}")
    elif s["state"] == runs.STOPPED:
        st.info("The benchmark job was stopped; start it again to continue (scored documents are kept).")
    elif s["state"] == runs.FAILED:
        st.error(f"**Cause:** the benchmark job failed: {s.get('error')}\n\n**Fix:** check the benchmark names and "
                 "that the run's model is still where it was made; the job log below has the details.",
                 icon=ui.ERROR_ICON)
        if s.get("log"):
            with st.expander("Job log"):
                st.code(s["log"], language=None)


def live_status(run: RunView, key: str) -> None:
    """bench_status, redrawn every 2 s while the job runs."""
    jobpanel.live(lambda: bench_status(run, key), active=benchmarks_status(run)["alive"])


def benchmarks_tab(run: RunView, stem: str, key: str = "runs_bench") -> None:
    """The tab: what the numbers are, the table and figure (or how to make them), and for a run of the runs folder
    the form and button that score it as a job."""
    from hopscotch_core.measure import benchmarks

    st.caption(WHAT)
    res = run.benchmarks()
    table = benchmark_table(res)
    if len(table):
        st.dataframe(intervals_as_text(table), hide_index=True)
        ui.chart(figures.benchmarks(table), key, f"{stem}-benchmarks")
        first = next(iter(res["benchmarks"].values()))
        st.caption(f"{res.get('source', '?')}; {first.get('shots', 0)}-shot; written {res.get('created', '?')}. "
                   "`average`: the mean over the benchmarks, its kept with an interval that resamples documents "
                   "within each benchmark.")
    else:
        cli = commands.shown(commands.benchmark_args(run.name, run.dir.parent, ["olmes"], DEFAULT_LIMIT))
        st.info(f"No benchmarks scored for this run yet: `{cli}` writes benchmarks.json"
                + (" (bundled example: read-only here)." if run.example else ", or start it below."))
    if run.example:
        return
    c1, c2, c3 = st.columns([3, 1, 1])
    shots = c3.radio("Shots", list(benchmarks.SHOTS), horizontal=True, key=f"{key}_shots",
                     help="Few-shot examples before each question (OLMES' own 0- and 5-shot request files)")
    options = list(benchmarks.OLMES) + [t for t in benchmarks.olmes_tasks(shots) if t not in benchmarks.OLMES]
    names = c1.multiselect("Benchmarks", options, default=list(benchmarks.OLMES), key=f"{key}_names",
                           help="The six of the OLMES core set by default; any other task of the installed OLMES "
                                "files too")
    limit = c2.number_input("Documents per benchmark", 1, 100_000, DEFAULT_LIMIT, step=50, key=f"{key}_limit",
                            help="The first N documents of each (doc_id order); every variant is scored on the same "
                                 "ones")
    st.code(commands.shown(commands.benchmark_args(run.name, state.runs_dir(), names, int(limit), int(shots))),
            language="bash")
    job = benchmarks_job(run)
    alive = jobs.status(state.runs_dir(), job)["alive"]
    if st.button("Score benchmarks", key=f"{key}_go", disabled=alive or not names,
                 help="Runs `hopscotch eval --benchmarks` as a job on the run's own model: every variant of the run "
                      "on the same documents; scored documents are kept, so a stopped job continues"):
        try:
            benchmarks.check(names, int(shots), int(limit))  # unknown names, files not installed: before any job
            jobs.start(commands.benchmark_args(run.name, state.runs_dir(), names, int(limit), int(shots),
                                               progress_file=True), state.runs_dir(), job)
            st.rerun()
        except Exception as e:  # noqa: BLE001 - shown with cause and fix
            ui.show_error(e, "starting the benchmark job")
    if not names:
        st.caption("Pick at least one benchmark.")
    live_status(run, key)
