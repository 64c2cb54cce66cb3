"""The forms of a new run: its data (source, sizes, answer length, seed) and its recovery settings (objective,
granularity, low-rank deltas), as RunSettings fields.

Streamlit glue only: the settings' schema and checks are hopscotch_core.method.settings. Prompts are read once per
source and file version (st.cache_data), and an uploaded file is written only when its content changed.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages.state import runs_dir
from app_pages.ui import ERROR_ICON, show_error
from hopscotch_core.method import prompt_sets, settings

UPLOADS = ".uploads"  # folder of the runs directory where uploaded prompt files are kept (runs read them later)


# ------------------------------------------------------------------------------------------------ prompts
@st.cache_data(show_spinner=False, max_entries=16)
def _prompts(source: str, column: str | None, version: tuple | None) -> list[dict]:
    from hopscotch_core.method import data

    return data.load_prompts(source, column)


def load_prompts(source: str, column: str | None) -> list[dict]:
    """data.load_prompts(source, column), read again only when a local file's size or time changes (errors are not
    cached: a fixed file is read on the next script run)."""
    path = Path(source).expanduser()
    version = None
    if path.is_file():
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
    return _prompts(source, column, version)


def save_upload(up) -> Path:
    """An uploaded prompt file under RUNS/.uploads (a job reads it by path); rewritten only when its content
    changed, so a rerun leaves the file (and the prompt cache keyed by its time) alone."""
    folder = runs_dir() / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(up.name).name
    content = up.getvalue()
    if not (path.is_file() and path.stat().st_size == len(content) and path.read_bytes() == content):
        path.write_bytes(content)
    return path.resolve()


# ------------------------------------------------------------------------------------------------ presets
# the widgets (key suffixes) that show a setting a preset sets; choosing a preset resets them to its values
PRESET_WIDGETS = {"n_calib": "nc", "n_eval": "ne", "n_train": "ntr", "max_new_tokens": "mnt",
                  "shortlist": "shortlist", "epochs": "epochs"}


def _reset_preset_widgets(key: str) -> None:
    for suffix in PRESET_WIDGETS.values():
        st.session_state.pop(f"{key}_{suffix}", None)  # redrawn with the new preset's value as its default


def preset_choice(key: str, times: dict[str, str]) -> dict:
    """The preset picker of a new run (quick first), each labelled with its time (`times`: name -> e.g. "7 min
    measured"). None picked: the form starts from the open run's settings; a pick resets the widgets it sets to
    its values (edits still win). Returns those values ({} when none is picked)."""

    def label(name: str) -> str:
        return f"{name} · {times[name]}" if times.get(name) else name

    name = st.segmented_control(
        "Preset", list(settings.PRESETS), default=None, key=f"{key}_preset", format_func=label,
        on_change=_reset_preset_widgets, args=(key,),
        help="quick: a first look in minutes (16 + 16 prompts, answers up to 128 tokens, 2 candidates trained per "
             "round, 2 epochs); default: the settings the README's results use. Times: the default model, k = 4, "
             "on a 2-core CPU (README \"Run time\"). None picked: the open run's settings.")
    if name is None:
        return {}
    default = settings.RunSettings()
    return {**{f: getattr(default, f) for f in PRESET_WIDGETS}, **settings.preset_values(name)}


# ------------------------------------------------------------------------------------------------ data
def data_settings(key: str, defaults: dict | None = None) -> dict | None:
    """Widgets for the data of a new run (source, size, answer length, seed). Returns RunSettings fields, or None
    when the data cannot be used (the error, with its fix, is shown)."""
    d = defaults or {}
    source_kinds = ("Bundled GSM8K problems", "General mix", "Upload a file", "File path or hf:NAME")
    named = {"gsm8k": 0, prompt_sets.MIX: 1}  # the named sources; anything else is a path
    start = named.get(d.get("data", "gsm8k"), 3)
    kind = st.radio("Prompts", source_kinds, index=start, key=f"{key}_src", horizontal=True,
                    help="The model's own greedy answers to these prompts are the training and held-out data. "
                         f"General mix: {prompt_sets.MIX_HELP}.")
    source = "gsm8k"
    if kind == source_kinds[1]:
        source = prompt_sets.MIX
    elif kind == source_kinds[2]:
        up = st.file_uploader("Prompt file (.jsonl, .json, .csv)", type=["jsonl", "json", "csv"], key=f"{key}_up")
        if up is None:
            st.caption("Upload a file with one prompt per record.")
            return None
        source = str(save_upload(up))
    elif kind == source_kinds[3]:
        source = st.text_input("Path or hf:NAME[:SPLIT]", value="" if d.get("data", "gsm8k") in named
                               else d["data"], key=f"{key}_path").strip()
        if not source:
            st.caption("Give a .jsonl/.json/.csv path, or hf:NAME[:SPLIT] when online.")
            return None
    column = st.text_input("Prompt column (empty: question/prompt/instruction/input/text)",
                           value=d.get("column") or "", key=f"{key}_col").strip() or None
    c1, c2, c3, c4, c5 = st.columns(5)
    n_calib = c1.number_input("Calibration prompts", 1, 2000, int(d.get("n_calib") or settings.DEFAULT_CALIB),
                              key=f"{key}_nc", help="the prompts the selection scores candidates on")
    given_train = d.get("n_train")
    n_train = c2.number_input("Training prompts", 0, 4000,
                              int(settings.DEFAULT_TRAIN if given_train is None else given_train), key=f"{key}_ntr",
                              help="the prompts the final scalars, multipliers and deltas train on: the calibration "
                                   "prompts plus the next ones of the same data (more data, better fidelity; the "
                                   "selection's cost does not grow with them). 0 = the calibration prompts only. "
                                   "Their answers are generated once per model and reused by later runs.")
    n_eval = c3.number_input("Held-out prompts", 1, 2000, int(d.get("n_eval") or settings.DEFAULT_EVAL),
                             key=f"{key}_ne")
    max_new = c4.number_input("Answer length (tokens)", 4, 1024,
                              int(d.get("max_new_tokens") or settings.DEFAULT_MAX_NEW_TOKENS),
                              key=f"{key}_mnt")
    seed = c5.number_input("Seed", 0, 2**31 - 1, int(d.get("seed") or 0), key=f"{key}_seed")
    # the default (None: max(calibration prompts, DEFAULT_TRAIN)) stays the default unless the number is changed
    n_train = None if (given_train is None and n_train == settings.DEFAULT_TRAIN) else int(n_train)
    if n_train and n_train < n_calib:
        st.error(f"**Cause:** {n_train} training prompts asked, fewer than the {n_calib} calibration prompts they "
                 "include.\n\n**Fix:** raise it to at least the calibration prompts, or 0 for those only.",
                 icon=ERROR_ICON)
        return None
    try:
        records = load_prompts(source, column)
    except Exception as e:  # noqa: BLE001 - DataError and friends, shown with a fix
        show_error(e, "reading the prompts")
        return None
    if n_calib + n_eval > len(records):
        st.error(f"**Cause:** {n_calib} calibration + {n_eval} held-out prompts asked, but the data has "
                 f"{len(records)} records.\n\n**Fix:** lower the two numbers or use a larger file.", icon=ERROR_ICON)
        return None
    wanted = settings.RunSettings(n_calib=int(n_calib), n_eval=int(n_eval), n_train=n_train)
    extra = wanted.train_size(int(n_calib), len(records)) - int(n_calib)
    if n_calib + n_eval + extra > len(records):
        st.error(f"**Cause:** {n_calib} calibration + {extra} more training + {n_eval} held-out prompts asked, but "
                 f"the data has {len(records)} records.\n\n**Fix:** lower the training prompts or use a larger "
                 "file.", icon=ERROR_ICON)
        return None
    mix = ""
    if source == prompt_sets.MIX:
        mix = " (" + ", ".join(f"{n} {name}" for name, n in prompt_sets.composition(records).items()) + ")"
    st.caption(f"{len(records)} prompts available{mix}; e.g. “{records[0]['prompt'][:120]}”")
    return {"data": source, "column": column, "n_calib": int(n_calib), "n_eval": int(n_eval), "n_train": n_train,
            "max_new_tokens": int(max_new), "seed": int(seed)}


# ------------------------------------------------------------------------------------------------ recovery
def recovery_settings(key: str, defaults: dict | None = None) -> dict:
    """Widgets for what scoring and scale training minimise (objective, KL weight) and the granularity of the
    scalars; returns those RunSettings fields. `paper` = objective ce, granularity scalar (the paper's)."""
    from hopscotch_core.method.settings import DELTA_INITS, GRANULARITIES, OBJECTIVES, PAPER, RunSettings

    default = RunSettings()
    fields = ("objective", "kl_weight", "granularity", "lora_rank", "lora_lr", "delta_init")
    d = {**{k: getattr(default, k) for k in fields},
         **{k: v for k, v in (defaults or {}).items() if k in fields and v is not None}}

    def label(value: str) -> str:
        return f"{value} (paper)" if value in (PAPER["objective"], PAPER["granularity"]) else value

    c1, c2, c3 = st.columns(3)
    objective = c1.selectbox("Objective", list(OBJECTIVES), index=list(OBJECTIVES).index(d["objective"]),
                             format_func=label, key=f"{key}_objective",
                             help="ce: cross-entropy on the model's own answers (the paper's); kl: KL(original || "
                                  "modified), the original model as teacher; ce+kl: ce + weight * kl")
    weight = c2.number_input("KL weight", 0.0, 100.0, float(d["kl_weight"]), key=f"{key}_kl_weight",
                             disabled=objective != "ce+kl", help="weight of the KL term in ce+kl")
    granularity = c3.selectbox("Granularity", list(GRANULARITIES), index=list(GRANULARITIES).index(d["granularity"]),
                               format_func=label, key=f"{key}_granularity",
                               help="scalar: one b per branch (the paper's); channel: b_att and b_mlp are vectors "
                                    "over the hidden size (still folds into the output projections)")
    c4, c5, c6 = st.columns(3)
    rank = c4.number_input("Low-rank deltas (rank)", 0, 4096, int(d["lora_rank"]), step=1, key=f"{key}_lora_rank",
                           help="rank-R corrections on every kept branch's output projection (o_proj, down_proj), "
                                "trained with the scalars once the blocks are chosen and folded into those weights "
                                "on export; 0 = none (the paper's)")
    lora_lr = c5.number_input("Delta learning rate", 1e-6, 1.0, float(d["lora_lr"]), format="%.5f",
                              key=f"{key}_lora_lr", disabled=rank == 0, help="Adam learning rate of the deltas")
    inits = list(DELTA_INITS)
    delta_init = c6.selectbox("Deltas start", inits, index=inits.index(d["delta_init"]), key=f"{key}_delta_init",
                              disabled=rank == 0,
                              help="lsq: each skipped block's output fitted by least squares onto the previous "
                                   "layer's MLP down-projection (from the original model's activations), then "
                                   "trained; zero: B = 0, the model starts unchanged")
    if (objective, granularity, rank) == (PAPER["objective"], PAPER["granularity"], PAPER["lora_rank"]):
        st.caption("paper: the paper's exact setting (--objective ce --granularity scalar --lora-rank 0)")
    return {"objective": objective, "kl_weight": float(weight), "granularity": granularity,
            "lora_rank": int(rank), "lora_lr": float(lora_lr), "delta_init": delta_init}
