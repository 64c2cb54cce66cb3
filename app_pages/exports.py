"""Export jobs on the pages: the open run's model in the four formats (compact, hf, gguf, deci) as a `hopscotch export`
job, and the live line of an export job (running, written, failed with its cause).

Streamlit glue only: the command lines come from hopscotch_core.studio.commands, the jobs from studio.jobs.
"""

from __future__ import annotations

import streamlit as st

from app_pages import jobpanel, state, ui
from hopscotch_core.method import runs
from hopscotch_core.studio import commands, jobs
from hopscotch_core.studio.gguf_demo import finished_export
from hopscotch_core.studio.runview import RunView

FORMATS = {"compact": "compact (skipped weights absent; hc.load_model)",
           "hf": "hf (scalars folded; stock transformers, vLLM)",
           "gguf": "gguf (llama.cpp, attention-free layers)",
           "deci": "deci (vLLM, SGLang; transformers with trust_remote_code: skipped attention absent)"}
QUANTS = ["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
QUANT_HELP = "q4_0 / q4_k_m go through llama.cpp's own quantizer"
CHECKED = "_gguf_checked"  # session state: the GGUF writer's verdict per (model, skip set, weight type)


def job_name(run: RunView) -> str:
    """The export job of a run (one at a time per run, whichever page started it)."""
    return f"{run.name}.export"


def gguf_refusal(model, lock, skip: list[int], quant: str) -> Exception | None:
    """Why the GGUF writer would refuse `skip` on `model` (its own exception: attention of the file's first layer
    skipped, a family or RoPE llama.cpp's deci layer does not compute, a bad weight type), or None. Kept per model,
    skip set and weight type for this session: the check waits for the model's lock, which a generation holds for
    up to half a second at a time."""
    from hopscotch_core.studio.gguf_demo import check_gguf

    key = (state.model_key(), tuple(sorted(skip)), quant)
    seen = st.session_state.setdefault(CHECKED, {})
    if key not in seen:
        try:
            check_gguf(model, skip, quant, lock=lock)
            seen[key] = None
        except Exception as e:  # noqa: BLE001 - the writer's refusal, shown by the caller
            seen[key] = e
    return seen[key]


def deci_refusal(model, skip: list[int]) -> Exception | None:
    """Why the deci writer would refuse `skip` on `model` (a family outside the Llama layer, a sliding window,
    attention skipped in the first layer that computes anything), or None. It reads only the config."""
    from hopscotch_core.studio.gguf_demo import check_deci

    try:
        check_deci(model, skip)
    except Exception as e:  # noqa: BLE001 - the writer's refusal, shown by the caller
        return e
    return None


REFUSED = {"gguf": "llama.cpp cannot run this run's model", "deci": "the deci layout cannot hold this run's model"}


def export_status(job: str, where=None) -> None:
    """One line for export job `job`: a progress bar while it runs, what it wrote, or why it failed."""
    where = where if where is not None else st
    s = jobs.status(state.runs_dir(), job)
    if s["alive"]:
        where.progress(0.5, text="Exporting the model (a job: it goes on if you leave the page) ...")
    elif s["state"] == runs.EXITED:
        where.success(f"Model written: `{(s.get('command') or ['?'])[-1]}` — "
                      f"{(s.get('log') or '').splitlines()[-1] if s.get('log') else ''}")
    elif s["state"] == runs.FAILED:
        where.error(f"**Cause:** the export failed: {s.get('error')}\n\n**Fix:** check the output directory "
                    "and that the loaded model is the one the run was made with.", icon=ui.ERROR_ICON)


def live_status(job: str, where=None) -> None:
    """export_status, redrawn every 2 s while the job runs."""
    alive = jobs.status(state.runs_dir(), job)["alive"]
    if where is not None:
        with where:
            jobpanel.live(lambda: export_status(job), active=alive)
    else:
        jobpanel.live(lambda: export_status(job), active=alive)


def run_export(run: RunView, key: str = "runs_exp") -> None:
    """The open run's trained model as compact, hf or gguf: the command, its start button, the job's line."""
    if run.adapter() is None:
        st.info("No trained adapter in this run yet (training not finished): nothing to export.")
        return
    c1, c2 = st.columns(2)
    fmt = c1.segmented_control("Format", list(FORMATS), default="gguf", key=f"{key}_format",
                               help="; ".join(FORMATS.values())) or "gguf"
    quant = c2.selectbox("GGUF weights", QUANTS, index=QUANTS.index("q8_0"), key=f"{key}_quant",
                         disabled=fmt != "gguf", help=QUANT_HELP)
    name = f"{run.name}-{fmt}" + (f"-{quant}" if fmt == "gguf" else "")
    out = state.runs_dir() / "exports" / name
    done = finished_export(out)
    args = commands.export_args(fmt, out, run=run.name, runs_dir=run.dir.parent,
                                quant=quant if fmt == "gguf" else None, force=done)
    st.code(commands.shown(args), language="bash")
    job = job_name(run)
    alive = jobs.status(state.runs_dir(), job)["alive"]
    loaded = st.session_state.get(state.MODEL)
    refusal = None
    if fmt in REFUSED and loaded is not None and state.run_model_problem(run, loaded[0]) is None:
        skip = run.adapter()[1].get("skipped") or []
        refusal = (gguf_refusal(loaded[0], loaded[2], skip, quant) if fmt == "gguf"
                   else deci_refusal(loaded[0], skip))
    if refusal is not None:  # before any job, in the writer's own words
        st.warning(f"**{REFUSED[fmt]}:** {refusal}", icon=":material/block:")
    if done:
        st.caption(f"Already exported to `{out}`; exporting again replaces it.")
    if st.button("Export again" if done else "Export", key=f"{key}_go", disabled=alive or refusal is not None,
                 help="Runs `hopscotch export` as a job on the run's own model: compact reloads with "
                      "hc.load_model(dir), hf in any Hugging Face tool, gguf in llama.cpp, deci in vLLM and SGLang "
                      "(and transformers with trust_remote_code=True) without the skipped attention"):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            jobs.start(args, state.runs_dir(), job)
            st.rerun()
        except Exception as e:  # noqa: BLE001 - shown with cause and fix
            ui.show_error(e, "starting the export")
    live_status(job)
