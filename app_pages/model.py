"""Model page: what Hopscotch does, the loaded model's architecture, and its singular-value map.

Drawn from the cards kept on disk for the same weights whenever they are there (measure.cached: no torch), so the
first page of a launch appears before the model and torch are in; the model computes them only the first time.
"""

import pandas as pd
import streamlit as st

from app_pages import state, tasks, ui
from hopscotch_core.measure.cached import cached_singular_values, cached_summary
from hopscotch_core.studio import figures
from hopscotch_core.method.settings import describe

st.title("Hopscotch Studio")
st.markdown(
    "Find and skip redundant **attention blocks** of a decoder language model, with the method of *Hopscotch* "
    "(Eyceoz et al. 2025, [arXiv 2506.03303](https://arxiv.org/abs/2506.03303)): every layer gets four trainable "
    "scalars, a skipped block is not computed at all, and the scalars are trained to recover quality.")

run = state.current_run()
if run is not None and run.example:
    st.info(f"**Example run loaded:** `{run.name}` — a finished run of the project's own pipeline "
            f"(`{run.manifest.get('settings', {}).get('model', '?')}` model). Every page shows it until you start "
            "your own: **Selection** (which blocks and why), **Scaling** (the learned scalars), **Compare** "
            "(generate side by side), **Runs** (all runs, fidelity and speed).\n\n"
            f"Made with: {describe(run.manifest.get('settings') or {})}.", icon=":material/menu_book:")
    cols = st.columns(4)
    for col, (page, label) in zip(cols, [("app_pages/selection.py", "Selection"), ("app_pages/scaling.py", "Scaling"),
                                         ("app_pages/compare.py", "Compare"), ("app_pages/runs.py", "Runs")]):
        col.page_link(page, label=f"Open {label}", icon=":material/arrow_forward:")

stamp = st.session_state.get(state.MODEL_STAMP)
# what was computed from the same weights before (kept on disk) is drawn at once, loaded or not
info = cached_summary(stamp)
if info is None:
    model, tok, lock = state.model_or_stop()
    from hopscotch_core.measure.info import summary  # torch: the model is in anyway

    info = summary(model)
st.subheader(f"Architecture · {info['family']}")
cols = st.columns(5)
cols[0].metric("Layers", info["layers"])
cols[1].metric("Heads / KV heads", f"{info['heads']} / {info['kv_heads']}")
n_params = info["parameters"]
cols[2].metric("Parameters", f"{n_params / 1e6:.1f} M" if n_params >= 1e5 else f"{n_params:,}")
cols[3].metric("Attention share of parameters", f"{100 * info['attention_parameter_share']:.1f} %")
cols[4].metric("Attention share of FLOPs (512 ctx)", f"{100 * info['attention_flop_share_ctx512']:.1f} %",
               help="FLOPs per token at 512 tokens of context: the most that skipping every attention block saves.")
if info["removed_attention_blocks"]:
    st.caption(f"Compact model: attention removed from blocks {info['removed_attention_blocks']}.")
with st.expander("Architecture details"):
    st.dataframe(pd.DataFrame({"value": [str(v) for v in info.values()]}, index=list(info.keys())))

st.subheader("Singular values")
st.caption("Largest singular value (spectral norm) of every weight matrix in every layer: how strongly each matrix "
           "can amplify its input. Hover a cell for its value.")
log_color = st.toggle("Log colour scale", value=True, key="sv_log")


def heatmap(sv) -> None:
    ui.chart(figures.singular_value_heatmap(sv, log_color=log_color), "sv_heatmap", "singular-values")


sv = cached_singular_values(stamp)
if sv is not None:
    heatmap(sv)
else:
    model, tok, lock = state.model_or_stop()
    from hopscotch_core.measure import metrics  # torch: the model is in anyway

    job = tasks.task(("singular_values", state.model_key()), metrics.singular_values, model)
    tasks.when_ready(job, heatmap, "Computing singular values (once per model: kept on disk)",
                      "computing singular values")
