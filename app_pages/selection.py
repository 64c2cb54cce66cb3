"""Selection page: start / stop a block-selection job; its live progress, elbow curve and candidate-loss map."""

import os

import streamlit as st

from app_pages import forms, jobpanel, state, ui
from hopscotch_core.studio import commands, figures
from hopscotch_core.method import estimate, selection
from hopscotch_core.method.settings import RunSettings


def time_estimate(settings: dict, n_layers: int, params: int, device: str) -> str:
    """The job's estimated time per stage, from the per-pass costs measured on the default run."""
    s = RunSettings(**{k: v for k, v in settings.items() if k in RunSettings.__dataclass_fields__})
    try:
        s.validate(n_layers)
    except Exception:  # noqa: BLE001 - the launcher shows the setting's own error
        return ""
    est = estimate.estimate(s, n_layers, params=params)
    parts = " · ".join(f"{estimate.STAGE_NAMES[k]} {estimate.fmt_duration(v)}" for k, v in est.items() if v >= 1)
    where = "a 2-core CPU" if device == "cpu" else "a 2-core CPU (a GPU takes a fraction of it)"
    return (f"Estimated time on {where}: about **{estimate.fmt_duration(sum(est.values()))}** ({parts}); from "
            "the per-pass costs measured on the default run, scaled to this model's size and these settings.")


model, n_layers, run = state.page_head(
    "Selection",
    "Which attention blocks can go? Each round, every remaining block (fast mode: a shortlist) is scored by "
    "skipping it and training the scalars for one epoch; the lowest loss is removed. Runs as a background "
    "job: switching pages or closing the tab does not stop it.",
)

with st.expander("Start a new selection", expanded=run is None):
    if model is not None:
        params = model[0].num_parameters()  # what the time estimates scale by
        preset = forms.preset_choice("sel", estimate.preset_times(n_layers, params))
        d = forms.data_settings("sel", {**((run.manifest.get("settings") or {}) if run else {}), **preset})
        c1, c2, c3, c4 = st.columns(4)
        k = c1.number_input("Blocks to remove (k)", 1, max(1, n_layers - 1), min(4, max(1, n_layers - 1)),
                            key="sel_k")
        mode = c2.segmented_control("Mode", ["fast", "paper"], default="fast", key="sel_mode",
                                    help="paper: every remaining block trained each round (about an hour per "
                                         "round for the default model on a 2-core CPU); fast: a cheap ranking "
                                         "first, then only the shortlist is trained.") or "fast"
        shortlist = c3.number_input("Shortlist (fast)", 1, n_layers, min(preset.get("shortlist", 4), n_layers),
                                    key="sel_shortlist",
                                    disabled=mode != "fast")
        shortlist_by = c4.selectbox("Shortlist by (fast)", ["bi", "loss"], key="sel_shortlist_by",
                                    disabled=mode != "fast", help="bi: attention block influence 1 - cos(x, x1), one "
                                    "forward per round; loss: untrained loss with the block skipped")
        c1, c2, c3 = st.columns([2, 1, 1])
        baselines = c1.multiselect("Baselines", list(selection.BASELINES), default=[], key="sel_baselines",
                                   help="attn-bi: lowest attention block influence; shortgpt: whole layers by block "
                                        "influence; random; one-round: the paper's round-1 scores, k at once")
        epochs = c2.number_input("Training epochs", 1, 200, preset.get("epochs", 3), key="sel_epochs")
        train_baselines = c3.checkbox("Train baselines' scalars", True, key="sel_train_bl")
        c1, c2 = st.columns([1, 3])
        cores = os.cpu_count() or 1
        nproc = int(c1.number_input("Processes", 1, max(1, cores), 1, key="sel_nproc",
                                    help="Local processes (torchrun): each round's candidates, the answers and the "
                                         "training rows are spread over them; same result as one process. Each "
                                         "gets cores / processes threads."))
        c2.caption(f"{nproc} process{'es' if nproc > 1 else ''} × {commands.threads_per_process(nproc, cores)} "
                   f"thread{'s' if commands.threads_per_process(nproc, cores) > 1 else ''} on {cores} cores"
                   + (" (torchrun, gloo on CPU / nccl on GPUs; a GPU machine gets one GPU per process)"
                      if nproc > 1 else ""))
        recovery = forms.recovery_settings("sel", (run.manifest.get("settings") if run else None))
        name = st.text_input("Run name", value="", key="sel_name", placeholder="(automatic)").strip()
        if d is not None:
            settings = {**state.model_settings(), **d, **recovery, "k": int(k), "mode": mode,
                        "shortlist": int(shortlist),
                        "shortlist_by": shortlist_by, "baselines": baselines, "epochs": int(epochs),
                        "train_baselines": bool(train_baselines)}
            st.caption(time_estimate(settings, n_layers, params, model[0].device.type))
            jobpanel.job_launcher("sel", commands.cli_args(settings, "run"), name, f"{mode}-k{int(k)}",
                                "Start selection job", nproc=nproc)


def panel() -> None:
    if not jobpanel.panel_head(run, "sel", "No run yet: start a selection above."):
        return
    layers = run.num_layers or n_layers or 0
    rounds, scores = run.rounds(), run.scores()
    c1, c2 = st.columns(2)
    stem = run.manifest.get("name") or run.name
    ui.chart(figures.elbow(rounds, run.overlay(), **run.objective()), "sel_elbow", f"{stem}-elbow", container=c1)
    knee, why = selection.suggest_k(rounds)
    c1.caption("Elbow: the loss after each removal (line; calibration data, scalars trained one epoch) and the "
               "held-out loss at k of the selected set and each baseline (markers). A bend marks where removing "
               f"more starts to hurt. {'★ ' if knee is not None else ''}{why[:1].upper() + why[1:]}.")
    kind, label = "paper", "loss"
    if len(scores) and (scores["kind"] == "shortlist").any():
        by = (run.manifest.get("settings") or {}).get("shortlist_by", "bi")
        short = "block influence" if by == "bi" else "untrained loss"
        kind = c2.segmented_control("Scores", ["paper", "shortlist"], default="paper", key="sel_kind",
                                    format_func=lambda k: "trained loss" if k == "paper" else f"shortlist: {short}",
                                    help="Fast mode ranks every block cheaply first and trains only the shortlist"
                                    ) or "paper"
        label = "loss" if kind == "paper" else short
    ui.chart(figures.candidate_heatmap(scores, layers, rounds, kind, label), "sel_heatmap",
                 f"{stem}-candidates-{kind}", container=c2)
    c2.caption("Every scored candidate in every round (green: cheap to remove; empty: not scored or already "
               "removed); stars: the block removed that round.")
    if len(rounds):
        st.dataframe(rounds.rename(columns={"n_removed": "blocks removed"}), hide_index=True)


jobpanel.live(panel, active=run is not None and jobpanel.status_of(run)["alive"])
