"""Hopscotch Studio: the Streamlit entry point (navigation and the shared model picker, nothing else).

Run:  bash scripts/dev.sh app      (or: streamlit run app.py)
The model is loaded once per process (st.cache_resource, keyed by source, device and dtype) and shared by all
browser sessions; pages never leave a skip set applied to it (see hopscotch_core.generation).
"""

import os
import threading

import streamlit as st

import hopscotch_core as hc

st.set_page_config(page_title="Hopscotch Studio", layout="wide")


@st.cache_resource(show_spinner="Loading model (the first load of the default model converts it: ~30 s)...")
def get_model(source: str, device: str, dtype: str):
    model, tok = hc.load_model(source, device=device, dtype=None if dtype == "auto" else dtype)
    return model, tok, threading.Lock()


with st.sidebar:
    st.markdown("### Model")
    source = st.text_input("Source", value=os.environ.get("HOPSCOTCH_MODEL", "default"),
                           help="'default' (embedded SmolLM2-135M-Instruct), a Hub id, a model directory or a .gguf")
    device = st.selectbox("Device", ["auto", "cpu", "cuda", "mps"])
    dtype = st.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"])

try:
    st.session_state["model"] = get_model(source, device, dtype)
    st.session_state["model_error"] = None
except (hc.HopscotchError, FileNotFoundError, ValueError, OSError) as e:
    st.session_state["model"] = None
    st.session_state["model_error"] = f"{type(e).__name__}: {e}"

nav = st.navigation([st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True)])
nav.run()
