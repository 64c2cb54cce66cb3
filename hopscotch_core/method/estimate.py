"""How long a run will take, before it starts and while it runs: stage by stage, from the stage times runs record.

    units = work_units(RunSettings(k=4), num_layers=30)         # stage -> amount of work (answer-token slots)
    costs = costs_from_manifest(manifest, num_layers=30)         # stage -> seconds per unit, from a finished run
    estimate(RunSettings(k=4), 30, costs)                        # stage -> seconds
    remaining(manifest, progress, now=time.time())               # seconds left of a running run, or None

A stage's work is counted in answer-token slots: prompts x max-new-tokens, times how many passes over them the
stage makes (generation writes them once; selection trains `shortlist` candidates one epoch per round in fast
mode, every remaining block in paper mode; scale training runs `epochs` epochs and scores the held-out prompts
after each; each baseline is trained and evaluated like the selected set). A finished run's manifest gives
seconds per unit for every stage it ran (its `timings`, which add up over resumes); `REFERENCE` holds those of
the bundled default example run, measured on a 2-core CPU, and is what an estimate uses when no run on this
machine is known. Other models scale by parameter count: forward and backward cost grow with the weights.

Pure Python, no torch: the app's forms and the job list call it on every script run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from .settings import DEFAULT_CALIB, DEFAULT_EVAL, RunSettings

# The pipeline's stages in the order they run ("teacher": the original model's outputs for the KL objective).
ORDER = ("prompts", "generate", "teacher", "select", "train", "evaluate", "baselines")
# The stages each CLI command runs (cli: generate -> answers, select -> + selection, train -> + training).
COMMAND_STAGES = {"generate": ORDER[:2], "select": ORDER[:4], "train": ORDER[:6], "run": ORDER}
STAGE_NAMES = {"prompts": "prompts", "generate": "answers", "teacher": "teacher", "select": "selection",
               "train": "training", "evaluate": "evaluation", "baselines": "baselines"}
HELD_OUT_PASS = 1 / 3  # a forward-only pass over a row costs about a third of forward + backward

# Seconds per unit of the bundled default example run (assets/example-run-k4: `hopscotch run --model default --k 4
# --baselines attn-bi,shortgpt,random` at the defaults, SmolLM2-135M, fp32, 2-core CPU); tests check these against
# that run's manifest. `params`: the model's parameter count, to scale the costs to other models.
REFERENCE = {
    "params": 134_515_008,
    "costs": {"prompts": 0.0, "generate": 0.0, "teacher": 0.0, "select": 0.0, "train": 0.0, "evaluate": 0.0,
              "baselines": 0.0},
}


# Measured wall time (s) of `hopscotch run --model default --k 4` at each preset on a 2-core CPU (README "Run time").
MEASURED = {"quick": None, "default": None}


def _sizes(s: RunSettings, n_records: int | None) -> tuple[int, int]:
    if n_records is not None:
        return s.split_sizes(n_records)
    return (s.n_calib if s.n_calib is not None else DEFAULT_CALIB, s.n_eval if s.n_eval is not None else DEFAULT_EVAL)


def select_passes(s: RunSettings, num_layers: int) -> float:
    """Candidate-epochs over the calibration rows that selection trains (a given skip set selects nothing)."""
    if s.blocks is not None:
        return 0.0
    if s.mode == "fast":
        shortlist = min(s.shortlist, num_layers)
        # the cheap ranking: one forward per round (bi) or one per remaining block (loss)
        ranking = sum((num_layers - r) if s.shortlist_by == "loss" else 1 for r in range(s.k)) * HELD_OUT_PASS
        return s.k * shortlist + ranking
    return float(sum(num_layers - r for r in range(s.k)))


def work_units(s: RunSettings, num_layers: int, n_records: int | None = None) -> dict[str, float]:
    """Work per stage in answer-token slots (see module docstring); 0 for a stage these settings skip."""
    calib, held = _sizes(s, n_records)
    c, e = calib * s.max_new_tokens, held * s.max_new_tokens
    train = s.epochs * (c + e * HELD_OUT_PASS)
    evaluate = e
    per_baseline = (train if s.train_baselines else 0.0) + evaluate
    return {"prompts": 0.0, "generate": float(c + e), "teacher": float(c) if s.objective != "ce" else 0.0,
            "select": select_passes(s, num_layers) * c, "train": float(train), "evaluate": float(evaluate),
            "baselines": len(s.baselines) * per_baseline}


def costs_from_manifest(manifest: Mapping, num_layers: int | None = None) -> dict[str, float]:
    """Seconds per unit of every stage a finished run timed (stages it did not run or did no work in are left
    out); `num_layers` defaults to the model the manifest recorded."""
    s = RunSettings.from_manifest(manifest.get("settings") or {})
    n = num_layers or (manifest.get("model") or {}).get("num_layers") or 0
    units = work_units(s, n)
    out = {}
    for stage, seconds in (manifest.get("timings") or {}).items():
        if stage in units and units[stage] > 0 and isinstance(seconds, (int, float)):
            out[stage] = float(seconds) / units[stage]
    return out


def estimate(s: RunSettings, num_layers: int, costs: Mapping[str, float] | None = None, params: int | None = None,
             n_records: int | None = None, stages: tuple[str, ...] = ORDER) -> dict[str, float]:
    """Seconds per stage of a run with settings `s` on a model of `num_layers` layers (and `params` parameters,
    scaling the reference costs), for the stages in `stages`; `costs` default to REFERENCE's."""
    base = dict(REFERENCE["costs"])
    base.update(costs or {})
    scale = (params / REFERENCE["params"]) if (params and costs is None) else 1.0
    units = work_units(s, num_layers, n_records)
    return {st: units[st] * base.get(st, 0.0) * scale for st in ORDER if st in stages}


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


def fmt_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
