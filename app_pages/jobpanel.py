"""Jobs on the pages: the launcher (the exact command a form runs, and its start button), the live panel of a
run's job (state, progress, stop), and run names.

Streamlit glue only: the jobs themselves are hopscotch_core.studio.jobs (start, stop, status), their command lines
hopscotch_core.studio.commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from app_pages.state import runs_dir, set_run
from app_pages.ui import ERROR_ICON, show_error
from hopscotch_core.method import runs
from hopscotch_core.method.estimate import fmt_duration
from hopscotch_core.studio import commands, jobs
from hopscotch_core.studio.runview import RunView

_DONE = ":material/check_circle:"
STATE_ICON = {runs.DONE: _DONE, runs.SELECTED: _DONE, runs.GENERATED: _DONE, runs.PROMPTED: _DONE,
              runs.EXITED: _DONE, runs.RUNNING: ":material/progress_activity:",
              runs.STARTING: ":material/hourglass_top:", runs.STOPPING: ":material/pause_circle:",
              runs.STOPPED: ":material/stop_circle:", runs.INTERRUPTED: ":material/warning:",
              runs.FAILED: ":material/error:"}
ALIVE = "_alive_"      # session-state prefix: whether a panel's job was alive at the last look
AUTO_NAME = "_auto_"   # session-state prefix: a launcher's automatic run name


# ------------------------------------------------------------------------------------------------ status
def status_of(run: RunView) -> dict:
    """jobs.status for a run in the runs directory; the manifest's state for an example."""
    if run.example:
        return {"name": run.name, "state": run.manifest.get("state", "?"), "alive": False, "stage": None,
                "fraction": None, "info": {}, "error": None, "log": "", "step": None, "total": None}
    return jobs.status(run.dir.parent, run.name)


def live(fn: Callable[[], None], active: bool, every: float = 2.0) -> None:
    """Run `fn` once; while `active`, as a fragment that reruns itself every `every` seconds."""
    if active:
        st.fragment(run_every=every)(fn)()
    else:
        fn()


def panel_head(run: RunView | None, key: str, empty: str) -> bool:
    """The top of a job page's live panel: `empty` as a note when there is no run (False), else the job header."""
    if run is None:
        st.info(empty)
        return False
    job_header(run, status_of(run), key)
    return True


def job_header(run: RunView, status: dict, key: str) -> None:
    """State, live progress and the stop button of a run's job; a full rerun when the job ends."""
    state = status["state"]
    was = st.session_state.setdefault(ALIVE + key, status["alive"])
    if was and not status["alive"]:
        st.session_state[ALIVE + key] = False
        st.rerun()  # the job ended: refresh the whole page (buttons, run list)
    st.session_state[ALIVE + key] = status["alive"]
    shown = (run.manifest.get("name") or run.name) if run.example else run.name
    label = f"{STATE_ICON.get(state, ':material/circle:')} **{shown}** — {state}"
    if run.example:
        label += " · bundled example (read-only)"
    st.markdown(label)
    if status["alive"]:
        info = status.get("info") or {}
        detail = " · ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in info.items() if k != "stage")
        step, total = status.get("step"), status.get("total")
        left = status.get("remaining_s")
        text = f"{status.get('stage') or 'working'}" + (f": {step}/{total}" if total else "") + (
            f" · {detail}" if detail else "") + (f" · about {fmt_duration(left)} left" if left is not None else "")
        st.progress(status.get("fraction") or 0.0, text=text)
        c1, c2 = st.columns([1, 4])
        if state != runs.STOPPING and c1.button("Stop", key=f"stop_{key}", help="SIGTERM: finishes the current "
                                                "step, saves the state; resume it later from the Runs page"):
            jobs.stop(run.dir.parent, run.name)
            st.rerun()
        if state == runs.STOPPING:
            c2.caption("Stopping after the current step (state is saved) ...")
        if status.get("updated"):
            c2.caption(f"updated {time.time() - status['updated']:.0f} s ago")
    elif state == runs.FAILED:
        err = status.get("error") or "unknown error"
        st.error(f"**Cause:** the job failed: {err}\n\n**Fix:** correct the setting it names and start again, or "
                 "resume it from the Runs page if it failed mid-way (finished steps are kept).", icon=ERROR_ICON)
        if status.get("log"):
            with st.expander("Job log"):
                st.code(status["log"], language=None)
    elif state in (runs.STOPPED, runs.INTERRUPTED):
        st.info("This run was stopped before the end; resume it from the Runs page (finished steps are kept).")


# ------------------------------------------------------------------------------------------------ launch
def start_job(args: list[str], name: str, nproc: int = 1) -> None:
    """Start a CLI job (on `nproc` local processes under torchrun when > 1) and make its run current; errors are
    shown, not raised."""
    try:
        jobs.start(args, runs_dir(), name, nproc=nproc)
    except Exception as e:  # noqa: BLE001 - shown as cause + fix
        show_error(e, "starting the job")
        return
    set_run(runs_dir() / name)


def job_launcher(key: str, args: list[str], name: str, auto: str, label: str, nproc: int = 1) -> None:
    """The exact command a form will run (`hopscotch ...`, or torchrun over `nproc` local processes; named `name`,
    or an automatic name from `auto`: the text jobs.start writes into the job's log) and the button that starts
    it as a job."""
    name = name or auto_name(key, auto)
    st.code(commands.shown(commands.job_args(args, runs_dir(), name), nproc), language="bash")
    if st.button(label, type="primary", key=f"{key}_start"):
        forget_auto_name(key)
        start_job(args, name, nproc)


def new_name(prefix: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}"


def auto_name(key: str, prefix: str) -> str:
    """A run name that stays the same between the command preview and the click (new when `prefix` changes)."""
    name = st.session_state.get(AUTO_NAME + key)
    if not name or not name.endswith(f"-{prefix}"):
        name = st.session_state[AUTO_NAME + key] = new_name(prefix)
    return name


def forget_auto_name(key: str) -> None:
    st.session_state.pop(AUTO_NAME + key, None)
