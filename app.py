"""Hopscotch Studio: the Streamlit entry point (navigation, the sidebar's model and run pickers, nothing else).

Run:  bash scripts/dev.sh app      (or: hopscotch app, or: streamlit run app.py; binds to localhost)
The model is loaded once per process (st.cache_resource, keyed by source, device and dtype) and shared by all
browser sessions; pages only ever apply skip sets under its lock and detach before letting go (see
hopscotch_core.compare). Long work runs as `hopscotch` CLI jobs writing into the runs directory ($HOPSCOTCH_RUNS,
default runs/), which the pages read back (hopscotch_core.jobs, hopscotch_core.runview). The bundled example run
(assets/example-run*) is listed read-only, so every plot has something to show on first launch.
"""

import os
import sys
import threading
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hopscotch_core as hc
from app_pages import common
from hopscotch_core.explain import explain
from hopscotch_core.runview import list_runs

st.set_page_config(page_title="Hopscotch Studio", page_icon=":material/grid_view:", layout="wide")


@st.cache_resource(show_spinner="Loading the model (the first load of the default model converts it: ~30 s) ...",
                   max_entries=2)
def get_model(source: str, device: str, dtype: str):
    """One model per (source, device, dtype) for the whole process; trust_remote_code stays off."""
    model, tok = hc.load_model(source, device=device, dtype=None if dtype == "auto" else dtype)
    return model, tok, threading.Lock()


with st.sidebar:
    st.markdown("### Model")
    source = st.text_input("Source", value=os.environ.get("HOPSCOTCH_MODEL", "default"), key="model_source",
                           help="'default' (the embedded SmolLM2-135M-Instruct), a Hub id (needs network or the "
                                "local HF cache), a model directory, or a .gguf file. Remote code is never run.")
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="model_device")
    dtype = c2.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key="model_dtype")

try:
    st.session_state["model"] = get_model(source.strip(), device, dtype)
    st.session_state["model_error"] = None
except Exception as e:  # noqa: BLE001 - every load failure becomes a message with cause and fix
    st.session_state["model"] = None
    st.session_state["model_error"] = explain(e, "loading the model")
st.session_state["model_key"] = (source.strip(), device, dtype)

runs = list_runs(common.runs_dir(), common.examples())
paths = [r["path"] for r in runs]
labels = {r["path"]: ("example · " if r.get("example") else "") + r["name"] for r in runs}
# The current run is kept in a shadow key: the picker's options change as runs come and go (which makes Streamlit
# treat it as a new widget), and a page may ask for another run ("run_next", set before the widget exists).
current = st.session_state.pop("run_next", None) or st.session_state.get("_kept_run")
if current not in paths:
    current = paths[0] if paths else None
common.put("run", current)
with st.sidebar:
    st.markdown("### Run")
    if paths:
        st.selectbox("Current run", paths, key="run", format_func=lambda p: labels.get(p, Path(p).name),
                     on_change=common.keep, args=("run",),
                     help="Shown on Selection, Scaling and Compare. Runs live in the runs directory "
                          "(HOPSCOTCH_RUNS); examples are bundled and read-only.")
    else:
        st.caption("No runs yet: start one on the Selection page.")
    st.caption(f"Runs directory: `{common.runs_dir()}`")
    if st.session_state["model"] is None:
        st.error("Model not loaded (see the page).")

pages = [
    st.Page("app_pages/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("app_pages/selection.py", title="Selection", icon=":material/checklist:"),
    st.Page("app_pages/scaling.py", title="Scaling", icon=":material/tune:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:"),
]
st.navigation(pages).run()
