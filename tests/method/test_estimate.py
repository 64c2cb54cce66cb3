"""Run-time estimates (method/estimate.py) and presets (method/settings.PRESETS, `--preset`)."""

from __future__ import annotations

import dataclasses

import pytest

from hopscotch_core import cli
from hopscotch_core.method import estimate
from hopscotch_core.method.settings import DEFAULT_TRAIN, PRESETS, RunSettings, to_args



def test_work_units_count_the_passes_of_each_stage():
    s = RunSettings(n_calib=10, n_eval=6, n_train=16, max_new_tokens=100, k=3, shortlist=2, epochs=4,
                    baselines=["random", "attn-bi"])
    u = estimate.work_units(s, num_layers=12)
    c, e, t = 10 * 100, 6 * 100, 16 * 100
    assert u["generate"] == {"gen": t + e, "fwd": 0, "train": 0}   # calibration + extra training + held-out answers
    assert u["teacher"] == {"gen": 0, "fwd": t, "train": 0}        # kl: the teacher runs once over the training rows
    # fast mode, bi shortlist: one ranking forward per round, then shortlist candidates one epoch each, on the
    # calibration prompts only
    assert u["select"] == {"gen": 0, "fwd": 3 * c, "train": 3 * 2 * c}
    # held-out loss after every epoch, and one forward over the training rows for the deltas' least-squares start
    assert u["train"] == {"gen": 0, "fwd": 4 * e + t, "train": 4 * t}
    assert u["evaluate"] == {"gen": 0, "fwd": 3 * e, "train": 0}   # original, unscaled, trained
    # random: trained + evaluated; attn-bi: one ranking forward (on the calibration prompts) too
    assert u["baselines"] == {"gen": 0, "fwd": 2 * (4 * e + t + 3 * e) + c, "train": 2 * 4 * t}
    # the calibration prompts only (n_train 0), deltas from zero: no extra answers, no least-squares forward
    z = estimate.work_units(dataclasses.replace(s, n_train=0, delta_init="zero"), 12)
    assert z["generate"]["gen"] == c + e and z["train"] == {"gen": 0, "fwd": 4 * e, "train": 4 * c}
    # the default: max(n_calib, DEFAULT_TRAIN) training prompts
    d = estimate.work_units(dataclasses.replace(s, n_train=None), 12)
    assert d["train"]["train"] == 4 * DEFAULT_TRAIN * 100
    # paper mode trains every remaining block (12 + 11 + 10 candidate-epochs); ce has no teacher
    p = estimate.work_units(RunSettings(n_calib=10, n_eval=6, max_new_tokens=100, k=3, mode="paper",
                                        objective="ce"), 12)
    assert p["select"]["train"] == 33 * c and p["select"]["fwd"] == 0 and p["teacher"]["fwd"] == 0
    # loss shortlist: one forward per remaining block and round; a given skip set selects nothing
    q = estimate.work_units(RunSettings(n_calib=10, n_eval=6, max_new_tokens=100, k=2, shortlist_by="loss"), 12)
    assert q["select"] == {"gen": 0, "fwd": (12 + 11) * c, "train": 2 * 4 * c}
    assert estimate.work_units(RunSettings(blocks=[1, 2]), 12)["select"] == {"gen": 0, "fwd": 0, "train": 0}
    # one-round in fast mode scores every block once; untrained baselines are only evaluated
    o = estimate.work_units(RunSettings(n_calib=10, n_eval=6, max_new_tokens=100, baselines=["one-round"],
                                        train_baselines=False), 12)
    assert o["baselines"] == {"gen": 0, "fwd": 3 * e, "train": 12 * c}


def test_costs_from_a_manifest_give_back_its_stage_times():
    settings = {"n_calib": 8, "n_eval": 4, "max_new_tokens": 50, "k": 2, "shortlist": 3, "epochs": 2,
                "objective": "kl", "granularity": "channel"}
    c, e = 400, 200
    gen, fwd, train = 0.02, 0.004, 0.01  # seconds per slot of a made-up machine
    timings = {"prompts": 0.01, "generate": gen * (c + e), "teacher": fwd * c,
               "select": fwd * 2 * c + train * 6 * c, "train": fwd * 2 * e + train * 2 * c, "evaluate": fwd * 3 * e}
    m = {"settings": settings, "timings": timings, "model": {"num_layers": 6, "params": 1000}}
    costs = estimate.costs_from_manifest(m)
    assert costs == pytest.approx({"gen": gen, "fwd": fwd, "train": train})
    again = estimate.estimate(RunSettings.from_manifest(settings), 6, costs)
    assert again == pytest.approx({**{k: v for k, v in timings.items() if k != "prompts"}, "prompts": 0.0,
                                   "baselines": 0.0})
    # twice the calibration prompts: twice the selection work, and the teacher's
    more = estimate.estimate(RunSettings.from_manifest({**settings, "n_calib": 16}), 6, costs)
    assert more["select"] == pytest.approx(2 * timings["select"]) and more["teacher"] == pytest.approx(2 * fwd * c)
    # the reference costs scale with the parameter count; costs given win over them
    base = estimate.estimate(RunSettings(), 30)
    twice = estimate.estimate(RunSettings(), 30, params=2 * estimate.REFERENCE["params"])
    assert all(twice[k] == pytest.approx(2 * base[k]) for k in base)
    assert estimate.estimate(RunSettings(), 30, costs, params=10**12) == estimate.estimate(RunSettings(), 30, costs)


def test_time_left_extrapolates_the_stage_and_scales_the_rest():
    settings = {"n_calib": 8, "n_eval": 4, "max_new_tokens": 50, "k": 2, "shortlist": 3, "epochs": 2,
                "objective": "ce"}
    costs = {"gen": 0.01, "fwd": 0.002, "train": 0.005}
    c, e = 400, 200
    est = estimate.estimate(RunSettings.from_manifest(settings), 6, costs)
    sel, train, evaluate = 2 * c * 0.002 + 6 * c * 0.005, 2 * e * 0.002 + 2 * c * 0.005, 3 * e * 0.002
    assert est["generate"] == pytest.approx(6.0) and est["select"] == pytest.approx(sel)
    m = {"settings": settings, "model": {"num_layers": 6}, "stage": "select", "stage_started": 1000.0,
         "timings": {"prompts": 0.0, "generate": 12.0}}  # generation took twice its estimate
    # 10 s spent on 2 of 6 steps: 20 s left of selection; later stages twice their estimates
    left = estimate.remaining(m, {"stage": "select", "step": 2, "total": 6}, now=1010.0, costs=costs)
    assert left == pytest.approx(20.0 + 2 * (train + evaluate))
    # no step yet: the stage's own estimate (scaled) less the time spent
    left = estimate.remaining(m, None, now=1001.0, costs=costs)
    assert left == pytest.approx(2 * sel - 1.0 + 2 * (train + evaluate))
    # `hopscotch select` ends after selection
    assert estimate.remaining(m, {"stage": "select", "step": 3, "total": 6}, "select", 1010.0, costs) \
        == pytest.approx(10.0)
    # progress of another stage (left over from the last one) is not this stage's
    assert estimate.remaining(m, {"stage": "generate", "step": 63, "total": 64}, now=1001.0, costs=costs) \
        == pytest.approx(2 * sel - 1.0 + 2 * (train + evaluate))
    assert estimate.remaining({**m, "model": None}, None) is None


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid_settings(name):
    s = RunSettings(**PRESETS[name])  # a name that is no setting fails here (TypeError)
    s.validate(num_layers=30)
    # the command line written for these settings (jobs and the manifest show it) reads back as the same settings:
    # a preset value of a type its flag does not parse, or one the writer drops, fails here
    argv = ["run", *to_args(dataclasses.asdict(s))]
    assert RunSettings.from_args(cli.build_parser(cli.preset_of(argv)).parse_args(argv)) == s


def test_preset_values_are_flag_defaults_and_given_flags_win():
    def settings(*argv):
        argv = ["run", *argv]
        return RunSettings.from_args(cli.build_parser(cli.preset_of(argv)).parse_args(argv))

    quick = settings("--preset", "quick", "--k", "7")
    assert {k: getattr(quick, k) for k in PRESETS["quick"]} == PRESETS["quick"] and quick.k == 7
    mine = settings("--epochs", "5", "--preset", "quick")
    assert mine.epochs == 5 and mine.n_calib == PRESETS["quick"]["n_calib"]
    assert settings("--preset", "default") == settings() == RunSettings()
    # quick is smaller in every stage than the defaults (so a first look is cheaper everywhere)
    full, short = estimate.estimate(RunSettings(), 30), estimate.estimate(RunSettings(**PRESETS["quick"]), 30)
    assert all(short[k] < full[k] for k in full if full[k] > 0)


def test_durations_read_as_people_say_them():
    assert estimate.fmt_duration(45) == "45 s"
    assert estimate.fmt_duration(12 * 60 + 10) == "12 min"
    assert estimate.fmt_duration(3900) == "1 h 05 min"


def test_settings_read_in_words():
    from hopscotch_core.method.settings import describe

    words = describe({"k": 7, "objective": "kl", "granularity": "channel", "lora_rank": 4, "n_calib": None,
                      "n_eval": 16, "max_new_tokens": 288, "mode": "fast", "shortlist": 4, "epochs": 3})
    assert words == ("k = 7, fast selection (shortlist 4), kl objective, per-channel multipliers, rank-4 deltas, "
                     "32 calibration + 16 held-out GSM8K prompts, answers up to 288 tokens, 3 epochs")
    # the defaults (but k and the comparisons) say so
    words = describe({**dataclasses.asdict(RunSettings(k=7)), "baselines": ["attn-bi", "random"]})
    assert words.endswith("rank-4 deltas (least-squares start), 32 calibration (+ 32 more for training) + 32 held-out "
                          "GSM8K prompts, answers up to 288 tokens, 2 epochs, compared with attn-bi, random "
                          "(the defaults)")
    assert describe({**dataclasses.asdict(RunSettings()), "model": "x/y", "device": "cuda"}).endswith("(the defaults)")
    assert not describe({**dataclasses.asdict(RunSettings()), "epochs": 3}).endswith("(the defaults)")
    assert not describe({**dataclasses.asdict(RunSettings()), "n_train": 0}).endswith("(the defaults)")
    # a manifest written before the recovery settings existed ran the paper's
    assert "ce objective (the paper's), scalar multipliers (the paper's), no low-rank deltas" in describe({"k": 4})


def test_a_running_jobs_status_says_the_time_left(tmp_path):
    import os
    import time

    from hopscotch_core.method.runs import write_json
    from hopscotch_core.studio import jobs

    run = tmp_path / "r1"
    run.mkdir()
    now = time.time()
    m = {"name": "r1", "state": "running", "pid": os.getpid(), "stage": "select", "stage_started": now - 30,
         "model": {"num_layers": 6, "params": estimate.REFERENCE["params"]},
         "settings": {"n_calib": 8, "n_eval": 4, "max_new_tokens": 50, "k": 2, "shortlist": 3},
         "timings": {"prompts": 0.0, "generate": 10.0, "teacher": 1.0}}
    write_json(run / "manifest.json", m)
    write_json(run / "progress.json", {"stage": "select", "step": 3, "total": 6, "time": now})
    status = jobs.status(tmp_path, "r1")
    assert status["alive"] and status["state"] == "running"
    # a run started by hand runs every stage; 30 s for half the selection: about 30 s more, then the rest
    later = estimate.remaining({**m, "stage": "select"}, {"stage": "select", "step": 6, "total": 6}, now=now)
    assert status["remaining_s"] == pytest.approx(30.0 + later, abs=2.0)
    # a finished run has no time left to show
    write_json(run / "manifest.json", {**m, "state": "done", "stage": None})
    assert jobs.status(tmp_path, "r1")["remaining_s"] is None


def test_presets_are_labelled_with_their_time(monkeypatch):
    est = {name: sum(estimate.estimate(RunSettings(**{**v, "k": 4}), 30).values()) for name, v in PRESETS.items()}
    monkeypatch.setattr(estimate, "MEASURED", {"quick": None, "default": None})
    got = estimate.preset_times(30, estimate.REFERENCE["params"])
    assert got == {name: f"≈ {estimate.fmt_duration(est[name])} estimated" for name in PRESETS}
    monkeypatch.setattr(estimate, "MEASURED", {"quick": 400.0, "default": None})
    got = estimate.preset_times(30, estimate.REFERENCE["params"])
    assert got["quick"] == "7 min measured" and got["default"].endswith("estimated")
    # a measurement on the default model says nothing of another one
    assert estimate.preset_times(30, 10 * estimate.REFERENCE["params"])["quick"].endswith("estimated")

