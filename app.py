"""Hopscotch Studio: the Streamlit entry point (navigation, the sidebar's model and run pickers, nothing else).

Run:  bash scripts/dev.sh app      (or: hopscotch app, or: streamlit run app.py; binds to localhost)
The model is loaded once per process (st.cache_resource, keyed by source, device and dtype) and shared by all
browser sessions; pages only ever apply skip sets under its lock and detach before letting go (see
hopscotch_core.studio.compare). Long work runs as `hopscotch` CLI jobs writing into the runs directory ($HOPSCOTCH_RUNS,
default runs/), which the pages read back (hopscotch_core.studio.jobs, hopscotch_core.studio.runview). The bundled example run
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

import hopscotch_core as hc  # lazy: torch and transformers load with the model, in its thread
from app_pages import state, tasks
from hopscotch_core.engine.stamps import source_stamp
from hopscotch_core.studio.explain import explain
from hopscotch_core.studio.runview import list_runs

st.set_page_config(page_title="Hopscotch Studio", page_icon=":material/grid_view:", layout="wide")


@st.cache_resource(show_spinner=False, max_entries=2)
def model_slot(source: str, device: str, dtype: str) -> tasks.Task:
    """One model per (source, device, dtype) for the whole process, loaded in a thread of its own so that every
    page draws at once; its result is (model, tokenizer, lock). trust_remote_code stays off. The thread starts at
    the end of the script run that asked first (below): the first page is drawn without torch, from the cards
    kept on disk, and the ~2 s of imports and the load do not compete with drawing it."""
    def load():
        model, tok = hc.load_model(source, device=device, dtype=None if dtype == "auto" else dtype)
        return model, tok, threading.Lock()

    return tasks.Task.thread(load, name="hopscotch-load-model", start=False)


with st.sidebar:
    st.markdown("### Model")
    source = st.text_input("Source", value=os.environ.get("HOPSCOTCH_MODEL", "default"), key=state.MODEL_SOURCE,
                           help="'default' (the embedded SmolLM2-135M-Instruct), a Hub id (needs network or the "
                                "local HF cache), a model directory, or a .gguf file. Remote code is never run.")
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key=state.MODEL_DEVICE)
    dtype = c2.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key=state.MODEL_DTYPE)

key = (source.strip(), device, dtype)
slot = model_slot(*key)
st.session_state[state.MODEL] = st.session_state[state.MODEL_ERROR] = st.session_state[state.MODEL_LOADING] = None
if slot.done() and slot.future.exception() is not None:
    st.session_state[state.MODEL_ERROR] = explain(slot.future.exception(), "loading the model")
    model_slot.clear()  # not kept: the next run tries again (after the files were fixed, say)
elif slot.done():
    st.session_state[state.MODEL] = slot.future.result()
else:
    st.session_state[state.MODEL_LOADING] = slot
st.session_state[state.MODEL_KEY] = key
try:
    st.session_state[state.MODEL_STAMP] = source_stamp(key[0], None if device == "auto" else device,
                                                   None if dtype == "auto" else dtype)  # the on-disk cards of this model (Model page)
except Exception:  # noqa: BLE001 - no stamp: nothing cached is shown, the model is waited for
    st.session_state[state.MODEL_STAMP] = None

runs = list_runs(state.runs_dir(), state.examples())
paths = [r["path"] for r in runs]
labels = {r["path"]: ("example · " if r.get("example") else "") + r["name"] for r in runs}
# The current run is kept in a shadow key: the picker's options change as runs come and go (which makes Streamlit
# treat it as a new widget), and a page may ask for another run ("run_next", set before the widget exists).
current = st.session_state.pop(state.RUN_NEXT, None) or st.session_state.get(state.KEPT_RUN)
if current not in paths:
    current = paths[0] if paths else None
state.put(state.RUN, current)
with st.sidebar:
    st.markdown("### Run")
    if paths:
        st.selectbox("Current run", paths, key=state.RUN, format_func=lambda p: labels.get(p, Path(p).name),
                     on_change=state.keep, args=(state.RUN,),
                     help="Shown on Selection, Scaling and Compare. Runs live in the runs directory "
                          "(HOPSCOTCH_RUNS); examples are bundled and read-only.")
    else:
        st.caption("No runs yet: start one on the Selection page.")
    st.caption(f"Runs directory: `{state.runs_dir()}`")
    if st.session_state[state.MODEL_LOADING] is not None:
        tasks.when_ready(slot, lambda _: None, "Loading the model (the default model's first load converts it: "
                          "~30 s)", "loading the model", every=0.5)
    elif st.session_state[state.MODEL] is None:
        st.error("Model not loaded (see the page).")

pages = [
    st.Page("app_pages/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("app_pages/selection.py", title="Selection", icon=":material/checklist:"),
    st.Page("app_pages/scaling.py", title="Scaling", icon=":material/tune:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:"),
]
page = st.navigation(pages)
st.session_state[state.PAGE_BEFORE] = st.session_state.get(state.PAGE)
st.session_state[state.PAGE] = page.url_path
try:
    page.run()
finally:  # also when the page stopped (st.stop) or asked for a rerun: the load starts once the page is drawn
    slot.start()
