"""The app's shared session state: the keys app.py and the pages share, kept widgets, the runs directory, the
current run and the sidebar's model.

Streamlit glue only: all computing is in hopscotch_core.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from hopscotch_core.studio.runview import RunView, example_dirs

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------------ session keys
# set by app.py on every script run, read by the pages
MODEL = "model"                  # (model, tokenizer, lock) of the sidebar's model; None while it loads or failed
MODEL_ERROR = "model_error"      # why it could not be loaded (cause and fix), or None
MODEL_LOADING = "model_loading"  # the tasks.Task loading it, while it loads
MODEL_KEY = "model_key"          # (source, device, dtype) chosen in the sidebar
MODEL_STAMP = "model_stamp"      # engine.loading.source_stamp of that model (its on-disk cards), or None
# the sidebar's widgets
MODEL_SOURCE, MODEL_DEVICE, MODEL_DTYPE = "model_source", "model_device", "model_dtype"
RUN = "run"                      # the current run's path (the sidebar's picker, a kept widget)
RUN_NEXT = "run_next"            # a run a page makes current on the next script run (before the picker exists)
PAGE, PAGE_BEFORE = "page", "page_before"  # the page this script run draws, and the one the run before drew
KEPT = "_kept_"                  # prefix of a kept widget's shadow copy (kept())
KEPT_RUN = KEPT + RUN


# ------------------------------------------------------------------------------------------------ kept widgets
def kept(key: str, default) -> dict:
    """Widget kwargs that keep the widget's value when the user visits other pages (Streamlit forgets the state of
    widgets that a script run does not draw): a shadow copy outlives the widget and seeds it on return."""
    shadow = KEPT + key
    if shadow not in st.session_state:
        st.session_state[shadow] = default
    st.session_state[key] = st.session_state[shadow]
    return {"key": key, "on_change": keep, "args": (key,)}


def keep(key: str) -> None:
    """on_change callback of a kept widget: remember its new value."""
    st.session_state[KEPT + key] = st.session_state[key]


def put(key: str, value) -> None:
    """Set a kept widget's value (from a callback, or before the widget is drawn)."""
    st.session_state[KEPT + key] = value
    st.session_state[key] = value


def page_opened() -> bool:
    """Whether this script run draws its page for the first time since another page (app.py keeps PAGE): what the
    browser held of the page before is gone."""
    return st.session_state.get(PAGE_BEFORE) != st.session_state.get(PAGE)


# ------------------------------------------------------------------------------------------------ places
def runs_dir() -> Path:
    return Path(os.environ.get("HOPSCOTCH_RUNS", "runs")).expanduser()


def examples() -> list[Path]:
    return example_dirs(os.environ.get("HOPSCOTCH_EXAMPLES") or ROOT / "assets")


def is_example(path: str | Path) -> bool:
    return any(Path(path).resolve() == e.resolve() for e in examples())


# ------------------------------------------------------------------------------------------------ current run
def current_run() -> RunView | None:
    path = st.session_state.get(KEPT_RUN) or st.session_state.get(RUN)
    if not path:
        return None
    return RunView(path, example=is_example(path))


def set_run(path: str | Path, rerun: bool = True) -> None:
    """Make `path` the current run (the sidebar picker takes it on the next script run)."""
    st.session_state[RUN_NEXT] = str(path)
    if rerun:
        st.rerun()


# ------------------------------------------------------------------------------------------------ model
def model_or_stop():
    """(model, tokenizer, lock) of the sidebar's model; or, while it loads, a note (the sidebar reruns the page
    when it is in), or an error with cause and fix; then the page stops."""
    got = st.session_state.get(MODEL)
    if got is None and st.session_state.get(MODEL_LOADING) is not None:
        st.info("Loading the model (see the sidebar); this page fills in when it is ready.",
                icon=":material/hourglass_top:")
        st.stop()
    if got is None:
        st.error("The model could not be loaded.\n\n" + (st.session_state.get(MODEL_ERROR) or ""))
        st.stop()
    return got


def model_key() -> tuple:
    return tuple(st.session_state.get(MODEL_KEY) or ())


def model_settings() -> dict:
    """The sidebar's model as RunSettings fields (a job loads its own copy)."""
    src, device, dtype = (list(model_key()) + ["default", "auto", "auto"])[:3]
    return {"model": src, "device": device, "dtype": None if dtype == "auto" else dtype}


def page_head(title: str, caption: str):
    """Draw a job page's title and caption; return (the loaded (model, tokenizer) or None, its layer count or None,
    the current run or None): where the Selection and Scaling forms start from. Without a model, says so."""
    st.title(title)
    st.caption(caption)
    model = st.session_state.get(MODEL)
    if model is None:
        st.warning("Load a model in the sidebar first.")
    n_layers = model[0].config.get_text_config().num_hidden_layers if model else None
    return model, n_layers, current_run()


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
