"""Model page: architecture summary, attention blocks to skip, original vs skipped answers side by side."""

import pandas as pd
import streamlit as st

from hopscotch_core.generation import generate_text
from hopscotch_core.info import summary

st.title("Hopscotch Studio")
st.caption("Find and skip redundant attention blocks (Hopscotch, Eyceoz et al. 2025, arXiv 2506.03303).")

if st.session_state.get("model") is None:
    st.error(f"The model could not be loaded. {st.session_state.get('model_error') or ''}\n\n"
             "Fix: pick 'default' (embedded), a local model directory, or a .gguf file in the sidebar.")
    st.stop()

model, tok, lock = st.session_state["model"]
info = summary(model)
cols = st.columns(4)
cols[0].metric("Layers", info["layers"])
cols[1].metric("Heads / KV heads", f"{info['heads']} / {info['kv_heads']}")
cols[2].metric("Parameters", f"{info['parameters'] / 1e6:.1f} M")
cols[3].metric("Attention share (params)", f"{100 * info['attention_parameter_share']:.1f} %")
with st.expander("Architecture details"):
    st.dataframe(pd.DataFrame({"value": [str(v) for v in info.values()]}, index=list(info.keys())))

st.subheader("Skip attention blocks")
skipped = st.multiselect("Attention blocks to skip", list(range(info["layers"])), default=[],
                         help="A skipped block's attention is not computed and gets no KV-cache entry.")
prompt = st.text_area("Prompt", "What is 12 * 3? Explain briefly.")
max_new = st.slider("Max new tokens", 8, 256, 48)
if st.button("Generate side by side", type="primary"):
    left, right = st.columns(2)
    with st.spinner("Generating..."):
        original = generate_text(model, tok, prompt, max_new_tokens=max_new, lock=lock)
        modified = generate_text(model, tok, prompt, skipped, max_new_tokens=max_new, lock=lock)
    left.markdown("**Original**")
    left.code(original, language=None)
    right.markdown(f"**Skipped {skipped or 'none'}**")
    right.code(modified, language=None)
