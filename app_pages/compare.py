"""Compare page: toggle attention blocks, generate with the original and the modified model side by side
(streamed, first diverging token marked), per-layer MMD for the current skip set, and its speed and memory."""

import hashlib
import time

import pandas as pd
import streamlit as st

from app_pages import state, tasks, ui
from hopscotch_core.studio import compare, drift, figures
from hopscotch_core.studio.explain import explain
from hopscotch_core.engine.scaling import compact_info
from hopscotch_core.measure import speed

st.title("Compare")
st.caption("Click blocks to skip them, then generate: the original model (left) and the modified one (right) answer "
           "the same prompt, greedily, token by token. Your choices only affect your own browser tab.")

model, tok, lock = state.model_or_stop()
if tok is None:
    st.error("**Cause:** this model has no tokenizer.\n\n**Fix:** load a model directory that includes one.")
    st.stop()
if compact_info(model) is not None:
    st.info("The loaded model is a compact model (its attention blocks are already removed). Load the original "
            "model in the sidebar to compare the two.")
    st.stop()

n_layers = model.config.get_text_config().num_hidden_layers
run = state.current_run()
problem = state.run_model_problem(run, model) if run is not None else None
run_blocks = [b for b in run.selected if 0 <= b < n_layers] if run is not None and problem is None else []
adapter = run.adapter() if run is not None and problem is None else None

source = str(run.dir) if run is not None else None
if st.session_state.get("cmp_from") != source:  # a new current run: start from its blocks and scalars
    st.session_state["cmp_from"] = source
    state.put("cmp_skip", list(run_blocks))
    state.put("cmp_scaled", adapter is not None)
if problem is not None:
    st.warning("The current run was made with another model, so its blocks and scalars are not applied here.\n\n"
               + explain(problem))


def _set_skip(blocks: list[int]) -> None:
    state.put("cmp_skip", list(blocks))


st.pills("Skipped attention blocks (click a block to toggle it)", list(range(n_layers)), selection_mode="multi",
         **state.kept("cmp_skip", list(run_blocks)))
c1, c2, c3 = st.columns([1, 1, 3])
c1.button("Blocks of the run", on_click=_set_skip, args=(run_blocks,), disabled=not run_blocks, key="cmp_from_run",
          help=f"The current run's selected blocks: {run_blocks}" if run_blocks else "No selected blocks in the run")
c2.button("Skip none", on_click=_set_skip, args=([],), key="cmp_none")
scaled = c3.toggle("Scaled: apply the run's trained scalars", disabled=adapter is None,
                   **state.kept("cmp_scaled", adapter is not None),
                   help="Off: the blocks are skipped with all other scalars at 1 (unscaled). On: the run's adapter.")
skip = sorted(int(b) for b in (st.session_state.get("cmp_skip") or []))
scales = adapter[0] if scaled and adapter is not None else None
channels = run.channel_scales() if scales is not None and run is not None else None  # granularity channel
deltas = run.lora() if scales is not None and run is not None else {}  # low-rank healing
if scales is not None and sorted(adapter[1].get("skipped") or []) != skip:
    st.caption(f"Note: these scalars were trained with blocks {sorted(adapter[1].get('skipped') or [])} skipped.")

presets = list(compare.PRESET_PROMPTS) + (run.prompts("eval", 5) if run is not None else [])


def _use_preset() -> None:
    if st.session_state.get("cmp_preset"):
        state.put("cmp_prompt", st.session_state["cmp_preset"])


st.selectbox("Preset prompts", presets, index=None, key="cmp_preset", on_change=_use_preset,
             placeholder="Pick a preset prompt (the last ones are the run's held-out prompts) ...")
prompt = st.text_area("Prompt", height=90, **state.kept("cmp_prompt", compare.PRESET_PROMPTS[0]))
max_new = st.slider("Max new tokens", 4, 256, **state.kept("cmp_max_new", 32))
go = st.button("Generate side by side", type="primary", key="cmp_go", disabled=not prompt.strip())

label = f"Skipped {skip}" if skip else "Nothing skipped"
label += " · scaled" if scales is not None else (" · unscaled" if skip else "")
left, right = st.columns(2)
lp, rp = left.empty(), right.empty()
note = st.empty()


def render(a: list[int], b: list[int], title_b: str, done: bool) -> None:
    at = compare.first_divergence(a, b)
    lp.html(compare.highlight_html(tok, a, at, "Original", done))
    rp.html(compare.highlight_html(tok, b, at, title_b, done))
    if at is None:
        note.caption("Identical so far." if not done else "The two generations are identical.")
    else:
        note.caption(f"They part at token {at} (marked).")


if go:
    a: list[int] = []
    b: list[int] = []
    try:
        shown = 0.0
        for a, b in compare.stream_pair(model, tok, prompt, skip, scales, max_new_tokens=int(max_new), lock=lock,
                                        channel_scales=channels, lora=deltas):
            if time.perf_counter() - shown > 0.25:  # at most 4 redraws a second: the browser shares the CPU
                render(a, b, label, False)
                shown = time.perf_counter()
        render(a, b, label, True)
        st.session_state["cmp_result"] = {"a": a, "b": b, "label": label}
    except Exception as e:  # noqa: BLE001 - shown with cause and fix
        ui.show_error(e, "generating")
elif st.session_state.get("cmp_result"):
    res = st.session_state["cmp_result"]
    render(res["a"], res["b"], res["label"], True)

if run is not None and problem is None:  # one answer in proportion: how often answers survive this skip set
    from hopscotch_core.measure import answers as answers_kept, benchmarks

    lines = compare.survival(answers_kept.read(run.dir), benchmarks.read(run.dir), scales is not None)
    if lines and sorted(skip) == sorted(run_blocks):
        st.info("**How often answers survive** (the run's measurements): " + " ".join(lines),
                icon=":material/fact_check:")
    elif sorted(skip) == sorted(run_blocks):
        st.caption(f"How often this run's answers survive is not measured yet: `hopscotch eval --run {run.name} "
                   "--tasks answers` (and `--benchmarks olmes` for task accuracy kept).")

DRIFT_SLOTS = "cmp_drift_slots"  # [[measurement key, figure, last shown]]: the drift figures the browser holds
N_SLOTS = 2


def drift_slots(shown_key, fig) -> None:
    """The drift figure of `shown_key`, and the one shown before it kept drawn but hidden, each at a fixed place
    with a fixed key: toggling back to a set already seen flips which one shows, so the browser builds no figure
    (building the 9-subplot figure anew takes chromium ~1 s; the script run stays ~0.1 s). The shown figure's key
    is cmp_drift_fig{i}, i = session_state["cmp_drift_slot"]."""
    slots = st.session_state.setdefault(DRIFT_SLOTS, [])
    at = next((i for i, s in enumerate(slots) if s[0] == shown_key), None)
    if at is None and len(slots) < N_SLOTS:
        slots.append([shown_key, fig, 0.0])
        at = len(slots) - 1
    elif at is None:  # replaces the figure shown longest ago
        at = min(range(len(slots)), key=lambda i: slots[i][2])
        slots[at] = [shown_key, fig, 0.0]
    slots[at][2] = time.time()
    st.session_state["cmp_drift_slot"] = at
    for i, (_, f, _) in enumerate(slots):  # no container around them: a container's redraw rebuilds its charts
        ui.chart(f, f"cmp_drift_fig{i}", "hidden-state-drift")
    hidden = [f".st-key-cmp_drift_fig{i}{part}" for i in range(len(slots)) if i != at for part in ("", "_downloads")]
    if hidden:  # kept drawn at full width (no redraw when shown again), takes no room
        st.html(f"<style>{', '.join(hidden)} {{height: 0; overflow: hidden; visibility: hidden}}</style>")


st.subheader("Per-layer MMD and hidden-state drift")
st.caption("Where the skipped model's hidden states leave the original's: per layer, the unbiased MMD² between the "
           "two sets of token states (bars; red: skipped blocks) and, below, the same tokens projected on the "
           "original's top two principal components (grey: original, orange: modified; PCA fitted on the original). "
           "Drift (line): how far tokens moved in that plane, in units of the original cloud's size.")
measured_on = ["the run's held-out answers" if run is not None and problem is None else "the preset prompts",
               "the prompt above"]
on = st.segmented_control("Measure on", measured_on, default=measured_on[0], key="cmp_drift_on",
                          help="Long prompts work: at most 256 token positions are sampled (the same on both sides); "
                               "the two forward passes over the whole prompt are the cost.") or measured_on[0]
if state.page_opened():  # figures kept from an earlier visit are not in the browser any more: start afresh
    st.session_state.pop(DRIFT_SLOTS, None)
if not skip and scales is None:
    st.session_state.pop(DRIFT_SLOTS, None)
    st.info("Skip at least one block to measure how the hidden states change.")
elif on == measured_on[1] and not prompt.strip():
    st.session_state.pop(DRIFT_SLOTS, None)
    st.info("Write a prompt above to measure on it.")
else:
    answers = run.answers("eval", 4) if on == measured_on[0] and run is not None and problem is None else []
    prompts = [prompt] if on == measured_on[1] else list(compare.PRESET_PROMPTS)
    key = ("drift", state.model_key(), tuple(skip), scales is not None, source if answers else None,
           hashlib.sha256("\x00".join(prompts).encode()).hexdigest() if not answers else None)

    last = st.session_state.get("cmp_drift_last")

    def measure(**kw):  # in the worker thread (no st.* there): the measurement and its figure (0.4 s to build)
        res = drift.prompt_drift(model, tok, prompts, skip, scales, answers=answers, lock=lock, reuse=last,
                                 channel_scales=channels, lora=deltas, **kw)
        return None if res is None else (res, figures.drift(res, skip, max_panels=8))  # 12 panels: 0.7 s to draw

    job = tasks.task(key, measure, progress=True, stoppable=True, slot="cmp_drift")

    def show(got, previous: bool = False) -> None:
        res, fig = got
        if not previous:
            st.session_state["cmp_drift_last"] = res  # the next skip set reuses the original's pass when it can
            st.session_state["cmp_drift_shown"] = got
        drift_slots(key if not previous else st.session_state.get("cmp_drift_shown_key"), fig)
        if not previous:
            st.session_state["cmp_drift_shown_key"] = key
        st.caption(("**Previous measurement** (blocks " + ", ".join(str(b) for b in res.skipped) + ") until the "
                    "new one is in. " if previous else "")
                   + f"Measured on {len(res.positions)} of {res.total_tokens} token positions"
                   + (f" ({res.dropped} first tokens of sequences left out: attention sinks)" if res.dropped else "")
                   + f"; {sum(res.seconds.values()):.1f} s"
                   + (" (the original's pass reused)" if res.seconds.get("original") == 0.0 else "") + ".")

    shown = st.session_state.get("cmp_drift_shown")
    tasks.when_ready(job, show, "Measuring MMD and drift", "measuring the hidden-state drift",
                      meanwhile=(lambda: show(shown, previous=True)) if shown is not None else None)

st.subheader("Speed and memory")
est = pd.DataFrame(compare.estimate(model, skip))
st.dataframe(pd.DataFrame({
    "context": est["context"], "FLOP-bound speed-up": est["flop_bound"].map("{:.3f}×".format),
    "GFLOPs/token original": est["gflops_per_token_original"].map("{:.3f}".format),
    "GFLOPs/token skipped": est["gflops_per_token_skipped"].map("{:.3f}".format),
    "KV cache MB original": (est["kv_cache_bytes_original"] / 2**20).map("{:.2f}".format),
    "KV cache MB skipped": (est["kv_cache_bytes_skipped"] / 2**20).map("{:.2f}".format),
    "weights MB compact": (est["param_bytes_compact"] / 2**20).map("{:.1f}".format),
}), hide_index=True)
st.caption("Counted, not timed: the best speed-up if time were proportional to FLOPs, the KV cache of one sequence "
           "of that length, and the weights of the compact model (original: "
           f"{est['param_bytes_original'].iloc[0] / 2**20:.1f} MB).")
if st.button("Measure speed on this machine (3 rounds, 128-token prompt, 16 decoded tokens)", key="cmp_speed_go"):
    try:
        with st.spinner("Timing original, skipped and compact models in turn ..."):
            rows = speed.measure(model, skipped=skip, scales=scales, contexts=(128,), batch_sizes=(1,),
                                 decode_tokens=16, rounds=3, lock=lock,
                                 variants=("original", "skipped", "compact") if skip else ("original",))
        st.session_state["cmp_speed"] = {"skip": skip, "rows": rows}
    except Exception as e:  # noqa: BLE001 - shown with cause and fix
        ui.show_error(e, "measuring speed")
res = st.session_state.get("cmp_speed")
if res:
    df = pd.DataFrame(res["rows"])
    cols = [c for c in ("variant", "k", "context", "batch", "prefill_s_median", "speedup_prefill",
                        "decode_tok_s_median", "speedup_decode", "flop_bound", "kv_cache_bytes", "param_bytes")
            if c in df]
    st.dataframe(df[cols], hide_index=True)
    st.caption(f"Measured for blocks {res['skip']}: medians over rounds; speed-ups against the original.")

# ------------------------------------------------------------------------------------------------ llama.cpp
from app_pages import gguf_side  # noqa: E402 - the original beside the compressed GGUF: a section of its own

gguf_side.section(model, tok, lock, run if problem is None else None, skip, scales is not None, prompt, int(max_new),
                  label)
