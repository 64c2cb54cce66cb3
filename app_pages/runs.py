"""Runs page: every run with its status and key numbers; open, resume, stop or delete one; compare several."""

import json
from functools import partial

import pandas as pd
import streamlit as st

from app_pages import benchjobs, exports, jobpanel, state, ui
from hopscotch_core.method import runs
from hopscotch_core.studio import commands, figures, jobs
from hopscotch_core.studio.report import build_report
from hopscotch_core.studio.runview import RunView, diff_table, fidelity_diffs, list_runs

st.title("Runs")
st.caption(f"Runs in `{state.runs_dir()}` (set HOPSCOTCH_RUNS to use another folder) and the bundled examples "
           "(read-only). Jobs keep running when you leave the page or close the tab.")

rows = list_runs(state.runs_dir(), state.examples())
any_alive = any(r.get("state") in runs.ACTIVE for r in rows)


def _fmt(v):
    return round(v, 4) if isinstance(v, float) else v


def table() -> None:
    fresh = list_runs(state.runs_dir(), state.examples())
    if not fresh:
        st.info("No runs yet: start one on the Selection or Scaling page.")
        return
    df = pd.DataFrame([{
        "run": ("example · " if r.get("example") else "") + r["name"],
        "state": r.get("state"),
        "stage": r.get("stage") or "", "mode": r.get("mode"), "k": r.get("k"),
        "selected": " ".join(str(b) for b in r.get("selected") or []),
        "loss original": _fmt(r.get("loss_original")), "loss unscaled": _fmt(r.get("loss_unscaled")),
        "loss trained": _fmt(r.get("loss_trained")), "KL trained": _fmt(r.get("kl_trained")),
        "agreement trained": _fmt(r.get("agreement_trained")), "minutes": r.get("minutes"),
        "created": r.get("created"), "model": r.get("model"),
    } for r in fresh])
    st.dataframe(df, hide_index=True)
    st.caption("Losses: mean NLL per token of the original model's own answers to held-out prompts; KL(original ‖ "
               "modified) and top-1 agreement of the trained model against the original ("
               "`hopscotch eval` adds intervals, generated answers and per-layer MMD in eval.json).")


jobpanel.live(table, active=any_alive, every=3.0)
if not rows:
    st.stop()

st.subheader("Open a run")
paths = [r["path"] for r in rows]
names = {r["path"]: ("example · " if r.get("example") else "") + r["name"] for r in rows}
cur = st.session_state.get(state.RUN)
c1, c2 = st.columns([3, 1])
chosen = c1.selectbox("Run", paths, index=paths.index(cur) if cur in paths else 0, format_func=names.get,
                      key="runs_pick")
if chosen != cur and c2.button("Make current", key="runs_open", help="Selection, Scaling and Compare show it"):
    state.set_run(chosen)

run = RunView(chosen, example=state.is_example(chosen))
m = run.manifest
status = jobpanel.status_of(run)
jobpanel.job_header(run, status, "runs")

c1, c2, c3 = st.columns(3)
if not run.example:
    resumable = not status["alive"] and m and status["state"] in runs.RESUMABLE
    if c1.button("Resume", key="runs_resume", disabled=not resumable,
                 help="Continue from the last saved step, with the run's own settings"):
        rec = jobs.record(state.runs_dir(), run.name) or {}
        command = (rec.get("command") or [commands.command_of(m)])[0]
        if command not in commands.PIPELINE_COMMANDS:
            command = commands.command_of(m)
        jobpanel.start_job([command, "--resume", run.name, "--runs-dir", str(state.runs_dir())], run.name)
    confirm = c3.checkbox("Yes, delete it", key="runs_confirm", disabled=status["alive"])
    if c2.button("Delete", key="runs_delete", disabled=status["alive"] or not confirm,
                 help="Removes the run directory and its job files"):
        try:
            jobs.delete(state.runs_dir(), run.name)
            st.session_state.pop(state.KEPT_RUN, None)
            st.rerun()
        except Exception as e:  # noqa: BLE001 - shown with cause and fix
            ui.show_error(e, "deleting the run")
else:
    c1.caption("Bundled example: read-only (no resume or delete).")

if m:
    st.markdown("**Command that made it**")
    st.code(commands.command_line(m, None if run.example else str(state.runs_dir())), language="bash")
    stem = m.get("name") or run.name
    st.download_button("Download report (HTML)", partial(build_report, run.dir), file_name=f"{stem}-report.html",
                       mime="text/html", key="runs_report", on_click="ignore", icon=":material/download:",
                       help="One self-contained HTML file with every figure and table of this run, interactive, "
                            "opens offline in any browser (also `hopscotch report --run NAME`). Made on click.")
    tabs = st.tabs(["Results", "Fidelity", "Benchmarks", "Speed", "Settings", "Log", "Export"])
    with tabs[0]:
        res = m.get("results") or {}
        cols = st.columns(4)
        cols[0].metric("Selected blocks", " ".join(str(b) for b in run.selected) or "—")
        for col, key, label in ((cols[1], "eval_loss_original", "Held-out loss, original"),
                                (cols[2], "eval_loss_unscaled", "… skipped, unscaled"),
                                (cols[3], "eval_loss_trained", "… skipped, trained")):
            v = res.get(key)
            col.metric(label, f"{v:.4f}" if isinstance(v, float) else "—")
        if m.get("timings"):
            st.caption("Time per stage (s): " + ", ".join(f"{k} {v}" for k, v in m["timings"].items()))
        rounds = run.rounds()
        c1, c2 = st.columns(2)
        ui.chart(figures.elbow(rounds, run.overlay(), **run.objective()), "runs_elbow", f"{stem}-elbow", container=c1)
        ui.chart(figures.loss_curves(run.epochs()), "runs_loss", f"{stem}-loss", container=c2)
    with tabs[1]:
        fid = run.fidelity()
        if len(fid):
            st.dataframe(fid, hide_index=True)
            st.caption("From eval.json (`hopscotch eval`) when present, else the run's own evaluation; `_ci`: 95% "
                       "bootstrap interval over the held-out prompts [low, high] (files from before have none).")
            bars = fid[fid["variant"] != "original"].assign(run=run.name)
            if len(bars) and {"nll", "kl", "agreement"} <= set(bars.columns):
                ui.chart(figures.fidelity(bars), "runs_fid", f"{stem}-fidelity")
            diffs = run.eval_diffs()
            if diffs:
                st.dataframe(diff_table(diffs), hide_index=True)
                st.caption("Paired differences a − b over the same held-out prompts with their 95% interval; "
                           "✱ where it excludes 0 (a difference the prompts support), else it may be noise.")
            mmd = run.eval_layer_mmd()
            if mmd:
                variant = st.selectbox("Per-layer MMD of", list(mmd), key="runs_mmd_variant")
                blocks = next((r.get("attention") or [] for r in run.eval_rows() or []
                               if r.get("variant") == variant), [])
                ui.chart(figures.layer_mmd(mmd[variant], blocks), "runs_mmd", f"{stem}-mmd-{variant}")
        else:
            st.info("Not evaluated yet.")
    with tabs[2]:
        benchjobs.benchmarks_tab(run, stem)
    with tabs[3]:
        bench = run.bench()
        if bench:
            st.caption(f"`hopscotch bench` on {bench.get('device')} ({bench.get('dtype')}).")
            st.dataframe(pd.DataFrame(bench["rows"]), hide_index=True)
        else:
            st.info("No speed measurements in this run (`hopscotch bench --run NAME` writes bench.json).")
    with tabs[4]:
        st.code(json.dumps({k: m.get(k) for k in ("settings", "model", "versions", "data", "created", "updated")},
                           indent=2, default=str), language="json")
    with tabs[5]:
        st.code(run.log(40) or status.get("log") or "(empty)", language=None)
    with tabs[6]:
        exports.run_export(run)

st.subheader("Compare runs")
picked = st.multiselect("Runs to compare", paths, default=paths[:min(2, len(paths))], format_func=names.get,
                        key="runs_compare")
if picked:
    views = [RunView(p, example=state.is_example(p)) for p in picked]
    c1, c2 = st.columns(2)
    ui.chart(figures.elbows({names[p]: v.rounds() for p, v in zip(picked, views)}), "runs_elbows",
                 "elbows", container=c1)
    c1.caption("Each run's elbow curve: best candidate loss after each removal.")
    fid = []
    for v in views:
        f = v.fidelity()
        for r in f.to_dict("records"):
            if r.get("variant") != "original":
                fid.append({"run": v.name, "variant": r.get("variant"),
                            **{k: r.get(k) for k in ("nll", "kl", "agreement", "nll_ci", "kl_ci", "agreement_ci")}})
    ui.chart(figures.fidelity(pd.DataFrame(fid)), "runs_fidelity", "fidelity", container=c2)
    c2.caption("Held-out NLL, KL from the original and top-1 agreement, per run and variant; error bars: 95% "
               "bootstrap intervals over the held-out prompts (when eval.json has them).")
    diffs = fidelity_diffs(views)
    if len(diffs):
        st.markdown("**Differences** (paired over the same held-out prompts, 95% interval; ✱ = excludes 0)")
        st.dataframe(diffs, hide_index=True)
        st.caption("Within each run: trained vs unscaled, hopscotch vs each baseline; across runs evaluated on the "
                   "same held-out prompts and answers: the same variant in both. A difference whose interval "
                   "includes 0 is not supported by these prompts.")
