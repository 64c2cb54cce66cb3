"""What every page shares: the runs directory, the current run and model, job panels, error messages.

Streamlit glue only: all computing is in hopscotch_core (jobs, runview, figures, compare, explain).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path

import streamlit as st

from hopscotch_core.method import settings
from hopscotch_core.studio import figexport, jobs
from hopscotch_core.studio.explain import explain
from hopscotch_core.studio.runview import RunView, example_dirs

ROOT = Path(__file__).resolve().parent.parent
STATE_ICON = {"done": ":material/check_circle:", "running": ":material/progress_activity:",
              "starting": ":material/hourglass_top:", "stopping": ":material/pause_circle:",
              "stopped": ":material/stop_circle:", "interrupted": ":material/warning:", "failed": ":material/error:",
              "selected": ":material/check_circle:", "generated": ":material/check_circle:",
              "exited": ":material/check_circle:"}
ERROR_ICON = ":material/error:"


# ------------------------------------------------------------------------------------------------ places
def runs_dir() -> Path:
    return Path(os.environ.get("HOPSCOTCH_RUNS", "runs")).expanduser()


def examples() -> list[Path]:
    return example_dirs(os.environ.get("HOPSCOTCH_EXAMPLES") or ROOT / "assets")


def is_example(path: str | Path) -> bool:
    return any(Path(path).resolve() == e.resolve() for e in examples())


# ------------------------------------------------------------------------------------------------ state
def current_run() -> RunView | None:
    path = st.session_state.get("_kept_run") or st.session_state.get("run")
    if not path:
        return None
    return RunView(path, example=is_example(path))


def page_head(title: str, caption: str):
    """Draw a job page's title and caption; return (the loaded (model, tokenizer) or None, its layer count or None,
    the current run or None): where the Selection and Scaling forms start from. Without a model, says so."""
    st.title(title)
    st.caption(caption)
    if st.session_state.get("model") is None:
        st.warning("Load a model in the sidebar first.")
    model = st.session_state.get("model")
    n_layers = model[0].config.get_text_config().num_hidden_layers if model else None
    return model, n_layers, current_run()


def set_run(path: str | Path, rerun: bool = True) -> None:
    """Make `path` the current run (the sidebar picker takes it on the next script run)."""
    st.session_state["run_next"] = str(path)
    if rerun:
        st.rerun()


def model_or_stop():
    """(model, tokenizer, lock) of the sidebar's model; or, while it loads, a note (the sidebar reruns the page
    when it is in), or an error with cause and fix; then the page stops."""
    got = st.session_state.get("model")
    if got is None and st.session_state.get("model_loading") is not None:
        st.info("Loading the model (see the sidebar); this page fills in when it is ready.",
                icon=":material/hourglass_top:")
        st.stop()
    if got is None:
        st.error("The model could not be loaded.\n\n" + (st.session_state.get("model_error") or ""))
        st.stop()
    return got


def model_key() -> tuple:
    return tuple(st.session_state.get("model_key") or ())


def run_model_problem(run: RunView, model) -> Exception | None:
    """Why `run` does not belong to `model` (an AdapterMismatchError), or None when it does."""
    from hopscotch_core.engine.artifacts import check_identity

    saved = run.manifest.get("model")
    if not saved:
        return None
    try:
        check_identity(saved, model, run.dir)
    except Exception as e:  # noqa: BLE001 - AdapterMismatchError, shown with its fix
        return e
    return None


def show_error(e: BaseException, doing: str = "") -> None:
    st.error(explain(e, doing), icon=ERROR_ICON)


# ------------------------------------------------------------------------------------------------ figures
def chart(fig, key: str, name: str | None = None, *, container=None) -> None:
    """`st.plotly_chart(fig, key=key)` and, under it, small download buttons PNG, SVG and CSV (keys `{key}_png`,
    `{key}_svg`, `{key}_csv`; files `{name}.png` ..., `name` defaults to `key`; `container`: a column or other
    container to draw in, default the current one).

    Nothing is rendered while the page draws: each file is made only when its button is clicked (Streamlit's
    deferred download, in a thread of its own, without a rerun). PNG/SVG come from hopscotch_core.studio.figexport (kaleido
    in a headless Chromium kept alive by the server: ~2 s for the first image, then ~0.3 s); where kaleido or a
    browser is missing they are disabled and their tooltip names the fix. CSV is the plotted numbers, one row per
    point (figexport.figure_csv)."""
    where = container if container is not None else st
    where.plotly_chart(fig, key=key)
    stem = figexport.file_stem(name or key)
    problem = figexport.image_export_problem()
    row = where.container(horizontal=True, gap="small", key=f"{key}_downloads")
    for fmt in figexport.FORMATS:
        row.download_button(fmt.upper(), partial(figexport.figure_image, fig, fmt), file_name=f"{stem}.{fmt}",
                            mime=figexport.MIME[fmt], key=f"{key}_{fmt}", on_click="ignore", type="tertiary",
                            icon=":material/download:", disabled=problem is not None,
                            help=f"Not available: {problem}" if problem else f"The figure as {fmt.upper()}")
    row.download_button("CSV", partial(figexport.figure_csv, fig), file_name=f"{stem}.csv", mime="text/csv",
                        key=f"{key}_csv", on_click="ignore", type="tertiary", icon=":material/download:",
                        help="The plotted numbers: one row per point (trace, x, y; z for heatmaps)")


# ------------------------------------------------------------------------------------------------ jobs
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


# ------------------------------------------------------------------------------------------------ background
class Task:
    """One computation in a worker thread (no st.* call in it); `progress` is what its on_progress last said."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, progress: bool, stoppable: bool = False):
        self.started = time.time()
        self.progress: tuple[int, int, dict] | None = None
        self.stop = threading.Event()
        if progress:
            kwargs = {**kwargs, "on_progress": self._on_progress}
        if stoppable:
            kwargs = {**kwargs, "should_stop": self.stop.is_set}
        self.future: Future = _POOL.submit(fn, *args, **kwargs)

    def stale(self) -> bool:
        """Cancelled before it began, or told to stop (its result is not the answer): ask again."""
        return self.future.cancelled() or self.stop.is_set()

    @classmethod
    def thread(cls, fn: Callable[[], object], name: str) -> "Task":
        """fn() in a daemon thread of its own (not the page pool: a model load must not wait behind figures)."""
        t = cls.__new__(cls)
        t.started, t.progress, t.future, t.stop = time.time(), None, Future(), threading.Event()

        def work() -> None:
            try:
                t.future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to whoever reads the result
                t.future.set_exception(e)

        threading.Thread(target=work, name=name, daemon=True).start()
        return t

    def _on_progress(self, step: int, total: int, info: dict | None = None) -> None:
        self.progress = (step, total, info or {})

    def done(self) -> bool:
        return self.future.done() and not self.future.cancelled()


_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hopscotch-page")
_TASKS: OrderedDict[tuple, Task] = OrderedDict()  # process-wide: a result depends only on its key
_TASKS_LOCK = threading.Lock()


def task(key: tuple, fn: Callable, *args, slot: str | None = None, progress: bool = False, stoppable: bool = False,
         wait: float = 0.15, **kwargs) -> Task:
    """fn(*args, **kwargs) in a worker thread, once per `key` in this server process (the result is shared by
    every session asking with the same key; keep the model, skip set and inputs in it). With `slot`, a task this
    session started earlier in the same slot that has not begun yet is cancelled (a user clicking through skip
    sets waits for the last one only; with `stoppable`, fn gets should_stop() and one already running is told to
    stop). With `progress`, fn also gets on_progress(step, total, info). Waits up to
    `wait` seconds, so that a quick result (a cache hit) is drawn in this run without a progress line."""
    with _TASKS_LOCK:
        got = _TASKS.get(key)
        if got is None or got.stale():
            got = _TASKS[key] = Task(fn, args, kwargs, progress, stoppable)
            while len(_TASKS) > 64:
                _TASKS.popitem(last=False)
        _TASKS.move_to_end(key)
    if slot is not None:
        old = st.session_state.get(f"_task_{slot}")
        if old is not None and old is not got and not old.future.cancel() and not old.future.done():
            old.stop.set()  # already running: a stoppable fn ends at its next check (the others just finish)
        st.session_state[f"_task_{slot}"] = got
    if wait > 0:
        with contextlib.suppress(FutureTimeout, CancelledError):
            got.future.result(timeout=wait)
    return got


def when_ready(t: Task, draw: Callable[[object], None], label: str, doing: str, every: float = 1.0,
               meanwhile: Callable[[], None] | None = None) -> None:
    """draw(result) when `t` has finished (its error, with cause and fix, if it failed); until then a progress
    line that polls as a fragment, and one full rerun when the result is in: the page stays interactive while the
    figure fills in. Each poll redraws in the browser, which shares the CPU with the computation: polling every
    0.4 s made a 2.5 s measurement take 11.7 s on 2 cores, every 1 s 2.1-2.8 s.

    `meanwhile()`, if given, draws something in the result's place until it is in (the previous figure, say): drawn
    at the same place with the same keys, the browser then updates that figure instead of building a new one
    (building the 13-panel drift figure anew took chromium ~1.3 s)."""
    box = st.container()  # the progress line's place, before the result's: the result keeps its place either way
    if t.done() and not t.stale():
        err = t.future.exception()
        if err is not None:
            show_error(err, doing)
        else:
            draw(t.future.result())
        return

    def poll() -> None:
        if t.done() or t.stale():  # a stale task (stopped for another session) is asked for afresh
            st.rerun()
        step, total, _ = t.progress or (0, 0, {})
        took = f"{time.time() - t.started:.0f} s"
        if total:
            st.progress(min(1.0, step / total), text=f"{label} {step}/{total} · {took}")
        else:
            st.progress(0.0, text=f"{label} · {took}")

    with box:
        st.fragment(run_every=every)(poll)()
    if meanwhile is not None:
        meanwhile()


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
    was = st.session_state.setdefault(f"_alive_{key}", status["alive"])
    if was and not status["alive"]:
        st.session_state[f"_alive_{key}"] = False
        st.rerun()  # the job ended: refresh the whole page (buttons, run list)
    st.session_state[f"_alive_{key}"] = status["alive"]
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
        text = f"{status.get('stage') or 'working'}" + (f": {step}/{total}" if total else "") + (
            f" · {detail}" if detail else "")
        st.progress(status.get("fraction") or 0.0, text=text)
        c1, c2 = st.columns([1, 4])
        if state != "stopping" and c1.button("Stop", key=f"stop_{key}", help="SIGTERM: finishes the current step, "
                                             "saves the state; resume it later from the Runs page"):
            jobs.stop(run.dir.parent, run.name)
            st.rerun()
        if state == "stopping":
            c2.caption("Stopping after the current step (state is saved) ...")
        if status.get("updated"):
            c2.caption(f"updated {time.time() - status['updated']:.0f} s ago")
    elif state == "failed":
        err = status.get("error") or "unknown error"
        st.error(f"**Cause:** the job failed: {err}\n\n**Fix:** correct the setting it names and start again, or "
                 "resume it from the Runs page if it failed mid-way (finished steps are kept).", icon=ERROR_ICON)
        if status.get("log"):
            with st.expander("Job log"):
                st.code(status["log"], language=None)
    elif state in ("stopped", "interrupted"):
        st.info("This run was stopped before the end; resume it from the Runs page (finished steps are kept).")


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
    or an automatic name from `auto`) and the button that starts it as a job."""
    name = name or auto_name(key, auto)
    tail = " ".join(args) + f" --runs-dir {runs_dir()} --name {name}"
    if nproc > 1:
        st.code(f"OMP_NUM_THREADS={jobs.threads_per_process(nproc)} torchrun --standalone --nproc-per-node {nproc} "
                f"-m hopscotch_core {tail}", language="bash")
    else:
        st.code("hopscotch " + tail, language="bash")
    if st.button(label, type="primary", key=f"{key}_start"):
        forget_auto_name(key)
        start_job(args, name, nproc)


def new_name(prefix: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}"


def auto_name(key: str, prefix: str) -> str:
    """A run name that stays the same between the command preview and the click (new when `prefix` changes)."""
    name = st.session_state.get(f"_auto_{key}")
    if not name or not name.endswith(f"-{prefix}"):
        name = st.session_state[f"_auto_{key}"] = new_name(prefix)
    return name


def forget_auto_name(key: str) -> None:
    st.session_state.pop(f"_auto_{key}", None)


# ------------------------------------------------------------------------------------------------ data form
def data_settings(key: str, defaults: dict | None = None) -> dict | None:
    """Widgets for the data of a new run (source, size, answer length, seed). Returns RunSettings fields, or None
    when the data cannot be used (the error, with its fix, is shown)."""
    from hopscotch_core.method import data

    d = defaults or {}
    source_kinds = ("Bundled GSM8K problems", "Upload a file", "File path or hf:NAME")
    start = 0 if d.get("data", "gsm8k") == "gsm8k" else 2
    kind = st.radio("Prompts", source_kinds, index=start, key=f"{key}_src", horizontal=True,
                    help="The model's own greedy answers to these prompts are the training and held-out data.")
    source = "gsm8k"
    if kind == source_kinds[1]:
        up = st.file_uploader("Prompt file (.jsonl, .json, .csv)", type=["jsonl", "json", "csv"], key=f"{key}_up")
        if up is None:
            st.caption("Upload a file with one prompt per record.")
            return None
        folder = runs_dir() / ".uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / Path(up.name).name
        path.write_bytes(up.getvalue())
        source = str(path.resolve())
    elif kind == source_kinds[2]:
        source = st.text_input("Path or hf:NAME[:SPLIT]", value="" if d.get("data", "gsm8k") == "gsm8k"
                               else d["data"], key=f"{key}_path").strip()
        if not source:
            st.caption("Give a .jsonl/.json/.csv path, or hf:NAME[:SPLIT] when online.")
            return None
    column = st.text_input("Prompt column (empty: question/prompt/instruction/input/text)",
                           value=d.get("column") or "", key=f"{key}_col").strip() or None
    c1, c2, c3, c4 = st.columns(4)
    n_calib = c1.number_input("Calibration prompts", 1, 2000, int(d.get("n_calib") or settings.DEFAULT_CALIB),
                              key=f"{key}_nc")
    n_eval = c2.number_input("Held-out prompts", 1, 2000, int(d.get("n_eval") or settings.DEFAULT_EVAL),
                             key=f"{key}_ne")
    max_new = c3.number_input("Answer length (tokens)", 4, 1024,
                              int(d.get("max_new_tokens") or settings.DEFAULT_MAX_NEW_TOKENS),
                              key=f"{key}_mnt")
    seed = c4.number_input("Seed", 0, 2**31 - 1, int(d.get("seed") or 0), key=f"{key}_seed")
    try:
        records = data.load_prompts(source, column)
    except Exception as e:  # noqa: BLE001 - DataError and friends, shown with a fix
        show_error(e, "reading the prompts")
        return None
    if n_calib + n_eval > len(records):
        st.error(f"**Cause:** {n_calib} calibration + {n_eval} held-out prompts asked, but the data has "
                 f"{len(records)} records.\n\n**Fix:** lower the two numbers or use a larger file.", icon=ERROR_ICON)
        return None
    st.caption(f"{len(records)} prompts available; e.g. “{records[0]['prompt'][:120]}”")
    return {"data": source, "column": column, "n_calib": int(n_calib), "n_eval": int(n_eval),
            "max_new_tokens": int(max_new), "seed": int(seed)}


def model_settings() -> dict:
    """The sidebar's model as RunSettings fields (a job loads its own copy)."""
    src, device, dtype = (list(model_key()) + ["default", "auto", "auto"])[:3]
    return {"model": src, "device": device, "dtype": None if dtype == "auto" else dtype}


# ------------------------------------------------------------------------------------------------ widgets
def kept(key: str, default) -> dict:
    """Widget kwargs that keep the widget's value when the user visits other pages (Streamlit forgets the state of
    widgets that a script run does not draw): a shadow copy outlives the widget and seeds it on return."""
    shadow = f"_kept_{key}"
    if shadow not in st.session_state:
        st.session_state[shadow] = default
    st.session_state[key] = st.session_state[shadow]
    return {"key": key, "on_change": keep, "args": (key,)}


def keep(key: str) -> None:
    """on_change callback of a kept widget: remember its new value."""
    st.session_state[f"_kept_{key}"] = st.session_state[key]


def put(key: str, value) -> None:
    """Set a kept widget's value (from a callback, or before the widget is drawn)."""
    st.session_state[f"_kept_{key}"] = value
    st.session_state[key] = value


def recovery_settings(key: str, defaults: dict | None = None) -> dict:
    """Widgets for what scoring and scale training minimise (objective, KL weight) and the granularity of the
    scalars; returns those RunSettings fields. `paper` = objective ce, granularity scalar (the paper's)."""
    from hopscotch_core.method.settings import GRANULARITIES, OBJECTIVES, PAPER, RunSettings

    default = RunSettings()
    fields = ("objective", "kl_weight", "granularity", "lora_rank", "lora_lr")
    d = {**{k: getattr(default, k) for k in fields},
         **{k: v for k, v in (defaults or {}).items() if k in fields and v is not None}}

    def label(value: str) -> str:
        return f"{value} (paper)" if value in PAPER.values() else value

    c1, c2, c3 = st.columns(3)
    objective = c1.selectbox("Objective", list(OBJECTIVES), index=list(OBJECTIVES).index(d["objective"]),
                             format_func=label, key=f"{key}_objective",
                             help="ce: cross-entropy on the model's own answers (the paper's); kl: KL(original || "
                                  "modified), the original model as teacher; ce+kl: ce + weight * kl")
    weight = c2.number_input("KL weight", 0.0, 100.0, float(d["kl_weight"]), key=f"{key}_kl_weight",
                             disabled=objective != "ce+kl", help="weight of the KL term in ce+kl")
    granularity = c3.selectbox("Granularity", list(GRANULARITIES), index=list(GRANULARITIES).index(d["granularity"]),
                               format_func=label, key=f"{key}_granularity",
                               help="scalar: one b per branch (the paper's); channel: b_att and b_mlp are vectors "
                                    "over the hidden size (still folds into the output projections)")
    c4, c5, _ = st.columns(3)
    rank = c4.number_input("Low-rank deltas (rank)", 0, 4096, int(d["lora_rank"]), step=1, key=f"{key}_lora_rank",
                           help="rank-R corrections on every kept branch's output projection (o_proj, down_proj), "
                                "trained with the scalars once the blocks are chosen and folded into those weights "
                                "on export; 0 = none (the paper's)")
    lora_lr = c5.number_input("Delta learning rate", 1e-6, 1.0, float(d["lora_lr"]), format="%.5f",
                              key=f"{key}_lora_lr", disabled=rank == 0, help="Adam learning rate of the deltas")
    if objective == PAPER["objective"] and granularity == PAPER["granularity"] and rank == 0:
        st.caption("paper: the paper's exact setting (--objective ce --granularity scalar --lora-rank 0)")
    return {"objective": objective, "kl_weight": float(weight), "granularity": granularity,
            "lora_rank": int(rank), "lora_lr": float(lora_lr)}
