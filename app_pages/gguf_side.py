"""The Compare page's "in the runtime users ship" section: the original model in transformers beside the compressed
model as a llama.cpp GGUF, streamed with live tokens/s and the first differing token marked.

The GGUF comes from a `hopscotch export` job, cached on disk per model, run, skip set, trained state and weight
type (hopscotch_core.studio.gguf_demo), so a second request for the same model reuses the file. Streamlit glue only.
"""

from __future__ import annotations

import time

import streamlit as st

from app_pages import exports, jobpanel, state, ui
from hopscotch_core.method import runs
from hopscotch_core.studio import commands, compare, gguf_demo, jobs
from hopscotch_core.studio.runview import RunView

QUANT = "cmp_gguf_quant"      # kept widget: the demo file's weight type
GO = "cmp_gguf_go"            # the generate button
EXPORT = "cmp_gguf_export"    # the export button
RESULT = "cmp_gguf_result"    # the last finished pair: {"a", "b", "titles", "note", "file"}


def _titles(label: str, quant: str, frame: gguf_demo.RuntimeFrame | None) -> tuple[str, str]:
    def rate(s: dict) -> str:
        return f" · {s['tok_s']:.1f} tok/s" if s and s.get("tok_s") else ""

    a, b = frame.stats if frame is not None else ({}, {})
    return (f"Original · transformers{rate(a)}", f"{label} · llama.cpp GGUF {quant}{rate(b)}")


def _note(frame: gguf_demo.RuntimeFrame) -> str:
    at = compare.first_divergence(frame.a, frame.b)
    parts = ["Identical so far." if at is None else f"They part at token {at} (marked)."]
    for name, s in zip(("transformers", "llama.cpp"), frame.stats):
        if s["tokens"]:
            parts.append(f"{name}: first token {s['first_token_s']:.2f} s" +
                         (f", {s['tok_s']:.1f} tok/s" if s["tok_s"] else ""))
    parts.append(f"GGUF loaded in {frame.load_s:.2f} s.")
    if not frame.same_prompt:
        parts.append(f"Note: the two runtimes built different prompts ({frame.prompt_tokens[0]} vs "
                     f"{frame.prompt_tokens[1]} tokens; each uses its own chat template).")
    return " ".join(parts)


def _export_panel(req: gguf_demo.GGUFRequest) -> None:
    """The export's start button, or its live line while it runs, or why it failed."""
    status = jobs.status(state.runs_dir(), req.job)

    def line() -> None:
        s = jobs.status(state.runs_dir(), req.job)
        if s["alive"]:
            st.progress(0.5, text="Exporting the GGUF (a job: it goes on if you leave the page) ...")
        elif gguf_demo.cached_gguf(req.out) is not None:
            st.rerun()  # the file is in: draw the generate button
        elif s["state"] == runs.FAILED:
            st.error(f"**Cause:** the GGUF export failed: {s.get('error')}\n\n**Fix:** change the skip set or "
                     "weight type as the message says, then export again.", icon=ui.ERROR_ICON)

    st.code(commands.shown(req.args), language="bash")
    if st.button("Export the GGUF for this set", key=EXPORT, disabled=status["alive"],
                 help="Runs the export above as a job; its file is kept for this model, run, skip set, trained "
                      "state and weight type, so the next comparison of the same set starts at once"):
        try:
            gguf_demo.prepare_out(req)
            jobs.start(req.args, state.runs_dir(), req.job)
            st.rerun()
        except Exception as e:  # noqa: BLE001 - shown with cause and fix
            ui.show_error(e, "starting the GGUF export")
    jobpanel.live(line, active=status["alive"])


def section(model, tok, lock, run: RunView | None, skip: list[int], scaled: bool, prompt: str, max_new: int,
            label: str) -> None:
    """Draw the section: the original in transformers beside the `skip` set (scaled by `run`'s adapter when
    `scaled`) as a llama.cpp GGUF."""
    st.subheader("In llama.cpp: the original beside the compressed GGUF")
    st.caption("The runtime users ship: the original model in transformers (left) and the compressed model exported "
               "as a llama.cpp GGUF (right; skipped attention is absent from the file), each streaming in its own "
               "thread with its own chat template, greedy.")
    problem = gguf_demo.llamacpp_problem()
    if problem is not None:
        st.info(f"llama.cpp is not available here: {problem}", icon=":material/info:")
        return
    quant = st.segmented_control("GGUF weights", list(gguf_demo.DEMO_QUANTS),
                                 **state.kept(QUANT, gguf_demo.DEFAULT_QUANT)) or gguf_demo.DEFAULT_QUANT
    settings = state.model_settings()
    adapter = run.dir / runs.ADAPTER_DIR if scaled and run is not None else None
    try:
        req = gguf_demo.gguf_request(state.runs_dir(), model=settings["model"], dtype=settings["dtype"],
                                     run=run.name if run is not None else None, skip=skip, adapter=adapter,
                                     quant=quant)
        refusal = exports.gguf_refusal(model, lock, skip, quant)
        if refusal is not None:
            raise refusal
    except Exception as e:  # noqa: BLE001 - the writer's own message (what llama.cpp cannot represent)
        st.warning(f"**llama.cpp cannot run this set:** {e}", icon=":material/block:")
        return
    path = gguf_demo.cached_gguf(req.out)
    if path is None:
        _export_panel(req)
        return
    st.caption(f"File `{path}` ({path.stat().st_size / 2**20:.1f} MiB), reused for this model, run, skip set, "
               "trained state and weight type.")
    go = st.button("Generate: transformers vs llama.cpp", key=GO, disabled=not prompt.strip())
    left, right = st.columns(2)
    lp, rp, note = left.empty(), right.empty(), st.empty()

    def render(a, b, titles, text, done) -> None:
        at = compare.first_divergence(a, b)
        # wrapped in .hopscotch-gguf: told apart from the transformers pair above (tests, bench/bench_app.py)
        for where, ids, title in ((lp, a, titles[0]), (rp, b, titles[1])):
            where.html(f"<div class='hopscotch-gguf'>{compare.highlight_html(tok, ids, at, title, done)}</div>")
        note.caption(text)

    if go:
        frame = None
        try:
            shown = 0.0
            for frame in gguf_demo.stream_runtimes(model, tok, prompt, path, max_new_tokens=max_new, lock=lock):
                if time.perf_counter() - shown > 0.25:  # at most 4 redraws a second: the browser shares the CPU
                    render(frame.a, frame.b, _titles(label, quant, frame), _note(frame), False)
                    shown = time.perf_counter()
            if frame is not None:
                titles, text = _titles(label, quant, frame), _note(frame)
                render(frame.a, frame.b, titles, text, True)
                st.session_state[RESULT] = {"a": frame.a, "b": frame.b, "titles": titles, "note": text,
                                            "file": str(path)}
        except Exception as e:  # noqa: BLE001 - shown with cause and fix
            ui.show_error(e, "generating with llama.cpp")
    elif (res := st.session_state.get(RESULT)) and res.get("file") == str(path):
        render(res["a"], res["b"], res["titles"], res["note"], True)
