"""Scaling page: train the scalars for a chosen skip set (a CLI job), live loss curves, the learned scalars per
layer, and export (the adapter, or a compact model without the skipped weights)."""

import streamlit as st

from app_pages import exports, forms, jobpanel, state, ui
from hopscotch_core.method import runs
from hopscotch_core.studio import commands, figures, jobs
from hopscotch_core.studio.explain import explain

model, n_layers, run = state.page_head(
    "Scaling",
    "With blocks skipped, the four scalars of every layer (b_att, s_att, b_mlp, s_mlp; all 1 = the original "
    "model) are trained by self-distillation on the model's own answers; the model's weights stay frozen.",
)

with st.expander("Train scalars for a skip set", expanded=run is None):
    if model is not None:
        base = (run.manifest.get("settings") or {}) if run is not None else {}
        default_blocks = [b for b in (run.selected if run is not None else []) if b < n_layers]
        blocks = st.multiselect("Attention blocks to skip", list(range(n_layers)), default=default_blocks,
                                key="sc_blocks", help="Initialised from the current run's selected blocks.")
        d = forms.data_settings("sc", base)
        c1, c2 = st.columns(2)
        epochs = c1.number_input("Epochs", 1, 200, int(base.get("epochs") or 3), key="sc_epochs")
        lr = c2.number_input("Learning rate", 1e-5, 1.0, float(base.get("lr") or 3e-3), format="%.4f", key="sc_lr")
        recovery = forms.recovery_settings("sc", base)
        name = st.text_input("Run name", value="", key="sc_name", placeholder="(automatic)").strip()
        if not blocks:
            st.caption("Choose at least one block to skip.")
        elif d is not None:
            settings = {**state.model_settings(), **d, **recovery, "blocks": sorted(blocks),
                        "epochs": int(epochs), "lr": float(lr)}
            jobpanel.job_launcher("sc", commands.cli_args(settings, "train"), name,
                                "train-" + "-".join(str(b) for b in sorted(blocks)), "Start training job")


def panel() -> None:
    if not jobpanel.panel_head(run, "sc", "No run yet: train a skip set above, or start a selection."):
        return
    epochs = run.epochs()
    ui.chart(figures.loss_curves(epochs), "sc_loss", f"{run.manifest.get('name') or run.name}-loss")
    st.caption("Loss per epoch of scalar training: train (solid) and held-out (dashed), for the selected set "
               "(hopscotch) and each trained baseline. Held-out below its first value = the scalars help.")


jobpanel.live(panel, active=run is not None and jobpanel.status_of(run)["alive"])

if run is not None:
    st.subheader("Learned scalars")
    sets = run.scale_sets() + ([runs.ADAPTER_DIR] if run.adapter() is not None else [])
    if not sets:
        st.info("No trained scalars in this run yet.")
    else:
        c1, c2 = st.columns([1, 2])
        folder = c1.selectbox("Scalars of", sets, key="sc_folder",
                              format_func=lambda f: {runs.SCALES_DIR: "hopscotch (selected set)", runs.ADAPTER_DIR:
                                                     "final adapter"}.get(f, f.removeprefix("scales-")))
        epoch = None
        if folder != runs.ADAPTER_DIR:
            eps = run.scale_epochs(folder)
            if len(eps) > 1:
                epoch = c2.select_slider("After epoch", eps, value=eps[-1], key="sc_epoch",
                                         format_func=lambda e: str(e + 1))
        scales = run.scales(folder, epoch)
        if scales is not None:
            stem = f"{run.manifest.get('name') or run.name}-{folder}" + ("" if epoch is None else f"-epoch{epoch + 1}")
            ui.chart(figures.scalars(scales, run.scale_blocks(folder)), "sc_scalars", stem)
            st.caption("The four scalars of each layer: b scales a block's output, s its residual path; 1 everywhere "
                       "is the original model, b_att = 0 on skipped blocks (shaded).")

    st.subheader("Export")
    ad = run.adapter()
    if ad is None:
        st.info("The run has no final adapter yet (training not finished).")
    else:
        c1, c2 = st.columns(2)
        c1.download_button("Download the adapter (.zip)", run.adapter_zip(), file_name=f"{run.name}-adapter.zip",
                           key="sc_dl", help="scales.safetensors + hopscotch.json; load with "
                           "hc.load_adapter(model, dir) on the same base model")
        c1.caption(f"Skips blocks {ad[1].get('skipped')}; {ad[0].shape[0]} layers × 4 scalars.")
        fmt = c2.selectbox("Export format", list(exports.FORMATS), key="sc_format", format_func=exports.FORMATS.get)
        quant = c2.selectbox("GGUF weights", exports.QUANTS, key="sc_quant", disabled=fmt != "gguf",
                             help=exports.QUANT_HELP)
        out = c2.text_input("Output directory", value=str(state.runs_dir() / "exports" / f"{run.name}-{fmt}"),
                            key="sc_out")
        job = exports.job_name(run)
        exp = jobs.status(state.runs_dir(), job)
        problem = state.run_model_problem(run, model[0]) if model else None
        if problem is not None:
            c2.warning("This run was made with another model than the one loaded, so it cannot be exported with "
                       f"it.\n\n{explain(problem)}")
        elif c2.button("Export model", key="sc_export", disabled=exp["alive"] or model is None,
                       help="compact: without the skipped attention weights, reload with hc.load_model(dir); "
                            "hf: a plain checkpoint any Hugging Face tool loads; gguf: one .gguf file for llama.cpp; "
                            "deci: vLLM and SGLang serve it without the skipped attention"):
            try:
                jobs.start(commands.export_args(fmt, out, model=state.model_settings()["model"],
                                                adapter=run.dir / runs.ADAPTER_DIR, quant=quant), state.runs_dir(), job)
                st.rerun()
            except Exception as e:  # noqa: BLE001 - shown with cause and fix
                ui.show_error(e, "starting the export")
        exports.live_status(job, c2)
