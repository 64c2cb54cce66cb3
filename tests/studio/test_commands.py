"""studio/commands.py: every command line (a job's arguments, what the launcher and the log show, the command
that made a run) from one settings schema; studio/jobs re-exports the names."""

from __future__ import annotations

import dataclasses

import pytest

from hopscotch_core import cli
from hopscotch_core.method.pipeline import RunSettings
from hopscotch_core.studio import commands, jobs
from hopscotch_core.studio.runview import RunView


@pytest.mark.parametrize("kw", [
    {},
    {"model": "default", "k": 7, "baselines": ["attn-bi", "shortgpt", "random"]},
    {"model": "m/", "data": "x.jsonl", "column": "q", "n_calib": 8, "n_eval": 4, "mode": "paper", "epochs": 2,
     "train_baselines": False, "baselines": ["random"], "seed": 3, "dtype": "bfloat16", "threshold": 2.5},
    {"model": "m/", "blocks": [3, 1], "lr": 0.01, "device": "cpu"},
])
def test_cli_args_reproduce_the_settings(kw):
    s = RunSettings(**kw)
    command = "train" if s.blocks is not None else "run"
    args = jobs.cli_args(dataclasses.asdict(s), command)
    assert args[0] == command
    parsed = cli._settings(cli.build_parser().parse_args(args))
    if s.blocks is not None:
        s.validate()
        parsed.validate()
    assert parsed == s


def test_command_line_of_a_run(world):
    m = RunView(world.example).manifest
    line = jobs.command_line(m)
    assert line.startswith("hopscotch run --model ") and "--k 2" in line and "--baselines attn-bi,random" in line
    assert line.endswith("--name example-run")
    assert jobs.command_of({"settings": {"blocks": [1]}}) == "train"


def test_one_command_line_for_the_launcher_the_job_and_the_report(tmp_path):
    """studio/commands builds every command line: what a job runs (job_args), what the launcher and the job's log
    show (shown), and the command that made a run (command_line) are the same text; jobs re-exports the names."""
    runs_dir = tmp_path / "my runs"
    args = commands.job_args(commands.cli_args({"model": "m dir/", "k": 2}, "run"), runs_dir, "r")
    assert args == ["run", "--model", "m dir/", "--k", "2", "--runs-dir", str(runs_dir), "--name", "r"]
    line = commands.shown(args)
    assert line == f"hopscotch run --model 'm dir/' --k 2 --runs-dir '{runs_dir}' --name r"
    manifest = {"name": "r", "state": "done", "settings": dataclasses.asdict(RunSettings(model="m dir/", k=2))}
    assert commands.command_line(manifest, str(runs_dir)) == line
    assert commands.shown(args, nproc=2).startswith(
        f"OMP_NUM_THREADS={commands.threads_per_process(2)} torchrun --standalone --nproc-per-node 2 -m "
        "hopscotch_core run --model 'm dir/'")
    assert commands.job_args(["run", "--resume", "r"], runs_dir, "r")[-2:] == ["--runs-dir", str(runs_dir)]
    assert commands.job_args(["export", "--out", "x"], runs_dir, "r") == ["export", "--out", "x"]
    assert jobs.command_line is commands.command_line and jobs.cli_args is commands.cli_args


def test_every_run_setting_is_a_flag_and_comes_back_from_the_command_line():
    """One schema: each RunSettings field, changed from its default, survives RunSettings -> job arguments ->
    `hopscotch` parser -> RunSettings (a new field without its flag or its reading fails here)."""
    changed = {"model": "m/", "data": "x.csv", "column": "q", "n_calib": 5, "n_eval": 3, "max_new_tokens": 40,
               "gen_batch": 2, "k": 6, "mode": "paper", "shortlist": 2, "shortlist_by": "loss", "score_lr": 0.02,
               "lr": 0.004, "epochs": 5, "batch_tokens": 512, "threshold": 1.5, "blocks": None,
               "objective": "ce+kl", "kl_weight": 0.5, "granularity": "scalar", "lora_rank": 7, "lora_lr": 0.0007,
               "baselines": ["random", "one-round"], "train_baselines": False, "seed": 9, "device": "cpu",
               "dtype": "float16", "n_train": 80, "delta_init": "zero"}
    fields = [f.name for f in dataclasses.fields(RunSettings)]
    assert sorted(changed) == sorted(fields), "a new setting: add it to this test with a non-default value"
    default = RunSettings()
    for name in fields:
        if name == "blocks":
            s = RunSettings(blocks=[4, 2])
        else:
            s = RunSettings(**{name: changed[name]})
            assert getattr(s, name) != getattr(default, name)
        args = jobs.cli_args(dataclasses.asdict(s), "train" if s.blocks is not None else "run")
        parsed = cli._settings(cli.build_parser().parse_args(args))
        if s.blocks is not None:
            s.validate()
            parsed.validate()
        assert parsed == s, name
