"""How long a run will take, before it starts and while it runs: stage by stage, from the stage times runs record.

    work = work_units(RunSettings(k=4), num_layers=30)         # stage -> {kind: answer-token slots}
    costs = costs_from_manifest(manifest)                      # kind -> seconds per slot, from a finished run
    estimate(RunSettings(k=4), 30, costs)                      # stage -> seconds
    remaining(manifest, progress, now=time.time())             # seconds left of a running run, or None

Work is counted in answer-token slots: prompts x max-new-tokens, once per pass over them, of three kinds with
their own cost per slot: `gen` (greedy generation of the answers), `fwd` (a forward pass without gradients: the KL
teacher, the block-influence ranking, held-out losses) and `train` (a forward and backward pass of scale
training: every candidate selection scores, every epoch of the final training and of each baseline). A stage's
seconds are its slots of each kind times that kind's cost. A finished run's manifest gives the three costs from
its stage times (`timings`, which add up over resumes); `REFERENCE` holds those of the embedded default model on a
quiet 2-core CPU, which an estimate uses when no run on this machine is given. Other models scale by parameter
count: the cost of a pass grows with the weights.

Pure Python, no torch: the app's forms and the job list call it on every script run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from .settings import DEFAULT_CALIB, DEFAULT_EVAL, RunSettings

# The pipeline's stages in the order they run ("teacher": the original model's outputs for the KL objective).
ORDER = ("prompts", "generate", "teacher", "select", "train", "evaluate", "baselines")
STAGE_NAMES = {"prompts": "prompts", "generate": "answers", "teacher": "teacher", "select": "selection",
               "train": "training", "evaluate": "evaluation", "baselines": "baselines"}
# The stages each CLI command runs (cli: generate -> answers, select -> + selection, train -> + training).
COMMAND_STAGES = {"generate": ORDER[:2], "select": ORDER[:4], "train": ORDER[:6], "run": ORDER}
KINDS = ("gen", "fwd", "train")
EVAL_PASSES = 3  # held-out evaluation: the original, the unscaled and the trained model, one forward each

# The reference run: `hopscotch run --model default --k 4` with three baselines on the embedded default model
# (SmolLM2-135M, fp32) on a quiet 2-core CPU (torch's 2 threads), the bundled k = 4 example run as it was made
# before the final training read extra prompts (docs/measurements.md "Run time"): its settings (those that decide
# the work) and the wall seconds of its stages. The remade example run reuses its first stages and ran the rest
# on a busy machine, so its own times do not serve as costs.
REFERENCE_RUN = {
    "settings": {"n_calib": 32, "n_eval": 32, "n_train": 0, "max_new_tokens": 288, "k": 4, "mode": "fast",
                 "shortlist": 4, "shortlist_by": "bi", "epochs": 3, "objective": "kl", "granularity": "channel",
                 "lora_rank": 4, "delta_init": "zero", "baselines": ["attn-bi", "shortgpt", "random"]},
    "model": {"num_layers": 30, "params": 134_515_008},
    "timings": {"prompts": 0.01, "generate": 236.24, "teacher": 24.7, "select": 1047.34, "train": 364.74,
                "evaluate": 78.32, "baselines": 1254.6},
}
# Seconds per answer-token slot of each kind of pass: costs_from_manifest(REFERENCE_RUN). `params` scales them to
# other models.
REFERENCE = {"params": 134_515_008, "costs": {"gen": 0.01282, "fwd": 0.002795, "train": 0.007639}}

# Measured wall time (s) of `hopscotch run --model default --k 4` at each preset on a quiet 2-core CPU (README "Run
# time"); None where today's settings have not been timed so (the app then shows the estimate). The quick preset
# was timed before the deltas' least-squares start (one forward over 16 prompts more).
MEASURED: dict[str, float | None] = {"quick": 339.0, "default": None}


def _sizes(s: RunSettings, n_records: int | None) -> tuple[int, int]:
    if n_records is not None:
        return s.split_sizes(n_records)
    return (s.n_calib if s.n_calib is not None else DEFAULT_CALIB, s.n_eval if s.n_eval is not None else DEFAULT_EVAL)


def _work(gen: float = 0.0, fwd: float = 0.0, train: float = 0.0) -> dict[str, float]:
    return {"gen": float(gen), "fwd": float(fwd), "train": float(train)}


def work_units(s: RunSettings, num_layers: int, n_records: int | None = None) -> dict[str, dict[str, float]]:
    """Per stage, the answer-token slots of each kind of pass it makes (see module docstring)."""
    calib, held = _sizes(s, n_records)
    c, e = calib * s.max_new_tokens, held * s.max_new_tokens
    t = s.train_size(calib, n_records) * s.max_new_tokens  # the final training's prompts: calibration + extra
    start = t if (s.lora_rank and s.delta_init == "lsq") else 0  # the deltas' least-squares start: one forward
    if s.blocks is not None:
        select = _work()
    elif s.mode == "fast":  # the cheap ranking (one forward per round, or one per remaining block), then the shortlist
        ranks = sum((num_layers - r) if s.shortlist_by == "loss" else 1 for r in range(s.k))
        select = _work(fwd=ranks * c, train=s.k * min(s.shortlist, num_layers) * c)
    else:  # the paper's: every remaining block trained one epoch each round
        select = _work(train=sum(num_layers - r for r in range(s.k)) * c)
    train = _work(fwd=s.epochs * e + start, train=s.epochs * t)  # held-out loss after each epoch
    evaluate = _work(fwd=EVAL_PASSES * e)
    baselines = _work()
    for name in s.baselines:
        ranking = {"attn-bi": _work(fwd=c), "shortgpt": _work(fwd=c),
                   "one-round": _work(train=num_layers * c) if s.mode == "fast" else _work()}.get(name, _work())
        for part in (ranking, train if s.train_baselines else _work(), evaluate):
            baselines = {k: baselines[k] + part[k] for k in KINDS}
    return {"prompts": _work(), "generate": _work(gen=t + e),
            "teacher": _work(fwd=t) if s.objective != "ce" else _work(),
            "select": select, "train": train, "evaluate": evaluate, "baselines": baselines}


def costs_from_manifest(manifest: Mapping, num_layers: int | None = None) -> dict[str, float]:
    """Seconds per slot of each kind of pass, from a run's stage times (a kind its stages did not time is left
    out): gen from the answers stage, fwd from the forward-only stages (teacher, evaluation), train from the
    training stages (selection, training, baselines) less their forward passes at that fwd cost."""
    s = RunSettings.from_manifest(manifest.get("settings") or {})
    n = num_layers or (manifest.get("model") or {}).get("num_layers") or 0
    units, timings = work_units(s, n), manifest.get("timings") or {}
    timed = {st: float(t) for st, t in timings.items() if st in units and isinstance(t, (int, float))}
    out: dict[str, float] = {}
    if timed.get("generate") and units["generate"]["gen"] > 0:
        out["gen"] = timed["generate"] / units["generate"]["gen"]
    fwd_stages = [st for st in ("teacher", "evaluate") if st in timed and units[st]["fwd"] > 0]
    if fwd_stages:
        out["fwd"] = sum(timed[st] for st in fwd_stages) / sum(units[st]["fwd"] for st in fwd_stages)
    train_stages = [st for st in ("select", "train", "baselines") if st in timed and units[st]["train"] > 0]
    if train_stages:
        fwd = out.get("fwd", REFERENCE["costs"]["fwd"])
        spent = sum(timed[st] - fwd * units[st]["fwd"] for st in train_stages)
        out["train"] = max(0.0, spent) / sum(units[st]["train"] for st in train_stages)
    return out


def estimate(s: RunSettings, num_layers: int, costs: Mapping[str, float] | None = None, params: int | None = None,
             n_records: int | None = None, stages: tuple[str, ...] = ORDER) -> dict[str, float]:
    """Seconds per stage of a run with settings `s` on a model of `num_layers` layers, for the stages in
    `stages`. `costs` (seconds per slot by kind, e.g. costs_from_manifest of a run on this machine) fill in over
    REFERENCE's, which are scaled by `params` / the reference model's parameter count when given."""
    scale = params / REFERENCE["params"] if params else 1.0
    per = {k: v * scale for k, v in REFERENCE["costs"].items()}
    per.update(costs or {})
    units = work_units(s, num_layers, n_records)
    return {st: sum(units[st][k] * per[k] for k in KINDS) for st in ORDER if st in stages}


def _stage_of(progress_stage: str) -> str:
    """The pipeline stage a progress record belongs to ("train-attn-bi" and "baseline ..." are baselines)."""
    if progress_stage.startswith(("train-", "baseline")):
        return "baselines"
    return progress_stage.split(" ")[0]


def remaining(manifest: Mapping, progress: Mapping | None, command: str = "run", now: float | None = None,
              costs: Mapping[str, float] | None = None) -> float | None:
    """Seconds left of a running run (its manifest and progress.json): the current stage extrapolated from its
    progress (elapsed x steps left / steps done), or its estimate less the time spent when no step is done, plus
    the later stages' estimates; all estimates scaled by how long this run's finished stages took against theirs.
    None when there is nothing to go on (the model not recorded yet, no stage started)."""
    now = time.time() if now is None else now
    model = manifest.get("model") or {}
    stage = manifest.get("stage")
    if not model.get("num_layers") or stage not in ORDER:
        return None
    s = RunSettings.from_manifest(manifest.get("settings") or {})
    est = estimate(s, model["num_layers"], costs, model.get("params"), stages=COMMAND_STAGES.get(command, ORDER))
    timings = manifest.get("timings") or {}
    done = [st for st in ORDER[:ORDER.index(stage)] if st in timings and est.get(st, 0) > 0]
    expected = sum(est[st] for st in done)
    factor = min(4.0, max(0.25, sum(timings[st] for st in done) / expected)) if expected > 0 else 1.0
    started = manifest.get("stage_started")
    spent = max(0.0, now - started) if isinstance(started, (int, float)) else 0.0
    progress = progress or {}
    step, total = progress.get("step"), progress.get("total")
    here = None
    if stage != "baselines" and _stage_of(str(progress.get("stage") or "")) == stage and spent > 0 \
            and isinstance(step, (int, float)) and isinstance(total, (int, float)) and 0 < step <= total:
        here = spent * (total - step) / step
    if here is None:  # no step yet, or baselines (whose progress restarts with each baseline)
        here = max(0.0, est.get(stage, 0.0) * factor - spent)
    later = ORDER[ORDER.index(stage) + 1:]
    return here + factor * sum(est.get(st, 0.0) for st in later)


def preset_times(num_layers: int, params: int | None = None, k: int = 4) -> dict[str, str]:
    """Per preset, the time of a k-block run to show beside it: the measured one on the embedded default model
    (MEASURED), else the estimate for this model ("≈ 7 min estimated")."""
    from .settings import PRESETS

    out = {}
    for name, values in PRESETS.items():
        measured = MEASURED.get(name)
        if measured and (params is None or params == REFERENCE["params"]) and k == 4:
            out[name] = f"{fmt_duration(measured)} measured"
        else:
            seconds = sum(estimate(RunSettings(**{**values, "k": k}), num_layers, params=params).values())
            out[name] = f"≈ {fmt_duration(seconds)} estimated"
    return out


def fmt_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
