"""The core the app stands on: jobs (CLI subprocesses), runview (run dir -> tables), compare (side by side on a
shared model), explain (cause + fix). Jobs here are real `hopscotch` processes on a tiny model (~6 s each)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
import zipfile
from io import BytesIO

import pytest
import torch
from helpers.studio_world import build

import hopscotch_core as hc
from hopscotch_core import cli
from hopscotch_core.studio import commands, compare, jobs
from hopscotch_core.method.data import encode_prompt
from hopscotch_core.errors import AdapterMismatchError, ModelNotAvailableError
from hopscotch_core.studio.explain import cause_and_fix, explain, is_oom
from hopscotch_core.engine.generation import generate_text
from hopscotch_core.method.pipeline import RunSettings
from hopscotch_core.method.runs import read_json, write_json
from hopscotch_core.studio.runview import RunView, example_dirs, list_runs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.getbasetemp() / "studio")


@pytest.fixture(scope="module")
def tiny(world):
    return hc.load_model(world.model_dir, device="cpu")


def wait(runs, name, until=lambda s: not s["alive"], timeout=120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = jobs.status(runs, name)
        if until(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"job {name} did not get there in {timeout} s: {jobs.status(runs, name)}")


# ----------------------------------------------------------------------------------------------- commands
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


# ----------------------------------------------------------------------------------------------- jobs
def job_args(world, *extra):
    return ["run", "--model", str(world.model_dir), "--data", str(world.data), "--n-calib", "8", "--n-eval", "4",
            "--max-new-tokens", "10", "--gen-batch", "4", "--device", "cpu", "--k", "2", *extra]


@pytest.mark.subprocess
def test_a_job_runs_to_the_end_and_is_found_again_from_files(world, tmp_path):
    runs = tmp_path / "runs"
    rec = jobs.start(job_args(world, "--epochs", "2"), runs, "j1")
    assert rec["pid"] and jobs.record(runs, "j1")["command"][:2] == ["run", "--model"]
    assert jobs.status(runs, "j1")["state"] in ("starting", "running", "done")
    s = wait(runs, "j1")
    assert s["state"] == "done", s
    assert jobs.record(runs, "j1")["returncode"] == 0
    prog = read_json(runs / "j1" / "progress.json")
    assert prog["stage"] and prog["step"] == prog["total"] and "time" in prog  # the CLI's live progress file
    jobs._CHILDREN.clear()  # as if the app restarted: everything comes back from files
    listed = {r["name"]: r for r in list_runs(runs)}
    assert listed["j1"]["state"] == "done" and len(listed["j1"]["selected"]) == 2
    with pytest.raises(ValueError, match="not allowed"):
        jobs.start(["run"], runs, "bad/name")


@pytest.mark.subprocess
def test_stop_is_graceful_and_the_run_resumes(world, tmp_path):
    runs = tmp_path / "runs"
    jobs.start(job_args(world, "--epochs", "400", "--k", "1"), runs, "long")
    s = wait(runs, "long", until=lambda s: s["state"] == "running" and s["stage"] == "train", timeout=120)
    assert s["alive"] and s["fraction"] is not None and s["info"].get("epoch") is not None
    assert jobs.stop(runs, "long")
    assert jobs.status(runs, "long")["state"] in ("stopping", "stopped")
    if jobs.is_alive(runs, "long"):
        with pytest.raises(jobs.JobError, match="stop it"):
            jobs.delete(runs, "long")
    s = wait(runs, "long")
    assert s["state"] == "stopped", s
    assert not jobs.stop(runs, "long")
    done_epochs = len(list((runs / "long" / "scales").glob("epoch_*.safetensors")))
    assert 0 < done_epochs < 400
    # resume (what the Runs page does), then stop again by SIGKILL: still resumable
    jobs.start(["run", "--resume", "long", "--runs-dir", str(runs)], runs, "long")
    wait(runs, "long", until=lambda s: s["state"] == "running" and s["stage"] == "train")
    assert jobs.stop(runs, "long", force=True)
    s = wait(runs, "long")
    assert s["state"] == "interrupted", s
    jobs.delete(runs, "long")
    assert not (runs / "long").exists() and jobs.record(runs, "long") is None


@pytest.mark.subprocess
def test_a_failing_job_reports_cause_from_its_log(world, tmp_path):
    runs = tmp_path / "runs"
    jobs.start(["run", "--model", str(world.model_dir), "--data", str(tmp_path / "nope.jsonl")], runs, "bad")
    s = wait(runs, "bad")
    assert s["state"] == "failed" and "does not exist" in s["error"]
    assert jobs.record(runs, "bad")["returncode"] == 2
    jobs.start(["run", "--no-such-flag"], runs, "usage")
    s = wait(runs, "usage")
    assert s["state"] == "failed" and "unrecognized arguments" in s["error"]
    jobs.delete(runs, "usage")
    assert "usage" not in jobs.job_names(runs)


def test_a_dead_running_run_is_interrupted(world, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(world.example, runs / "r")
    write_json(runs / "r" / "manifest.json", {**read_json(runs / "r" / "manifest.json"), "state": "running",
                                              "stage": "train", "pid": 2**22 + 17})
    assert jobs.status(runs, "r")["state"] == "interrupted"
    assert jobs.status(runs, "missing")["state"] == "missing"


# ----------------------------------------------------------------------------------------------- runview
def test_runview_reads_a_finished_run(world):
    v = RunView(world.example, example=True)
    m = v.manifest
    assert list(v.rounds()["removed"]) == m["selected"]
    assert set(v.scale_sets()) == {"scales", "scales-attn-bi", "scales-random"} and v.scale_epochs() == [0, 1]
    assert v.scale_blocks("scales-attn-bi") == v.baselines()["attn-bi"]["attention"]
    ad = v.adapter()
    assert ad is not None and torch.equal(ad[0], v.scales("adapter"))
    names = zipfile.ZipFile(BytesIO(v.adapter_zip())).namelist()
    assert sorted(names) == ["example-run-adapter/hopscotch.json", "example-run-adapter/scales.safetensors"]
    fid = v.fidelity()
    assert list(fid["variant"])[:3] == ["original", "hopscotch", "hopscotch-unscaled"]
    assert len(v.prompts("eval")) == 4 and len(v.answers("eval")) == 4 and len(v.answers("calib")) == 8
    row = v.summary()
    assert row["example"] and row["state"] == "done" and row["loss_trained"] == m["results"]["eval_loss_trained"]
    assert example_dirs(world.examples) == [world.example] and example_dirs(world.example) == [world.example]
    assert "stage train: done" in v.log()


def test_runview_reads_a_live_run_and_optional_measurements(world, tmp_path):
    d = tmp_path / "live"
    shutil.copytree(world.example, d)
    m = read_json(d / "manifest.json")
    write_json(d / "manifest.json", {**m, "selection": None, "selected": [], "state": "running"})
    v = RunView(d)
    # during selection the rounds come from scores.jsonl: the finished round (the next one has started) only
    assert list(v.rounds()["removed"]) == m["selected"][:1]
    write_json(d / "eval.json", {"format_version": 1, "rows": [
        {"variant": "original", "method": "original", "scaled": False, "attention": [], "mlp": [], "k": 0,
         "nll": 1.0, "ppl": 2.7, "kl": 0.0, "agreement": 1.0},
        {"variant": "hopscotch", "method": "hopscotch", "scaled": True, "attention": [1, 2], "mlp": [], "k": 2,
         "nll": 1.5, "ppl": 4.5, "kl": 0.2, "agreement": 0.8, "exact_match": None}]})
    ov = v.overlay()
    assert list(ov["label"]) == ["original", "hopscotch"] and list(ov["loss"]) == [1.0, 1.5]
    assert v.eval_layer_mmd() == {}
    write_json(d / "eval.json", {**read_json(d / "eval.json"), "layer_mmd": {"hopscotch": [0.0, 0.5, 0.25, 0.1]}})
    assert v.eval_layer_mmd() == {"hopscotch": [0.0, 0.5, 0.25, 0.1]}
    assert list(v.fidelity()["variant"]) == ["original", "hopscotch"]
    assert v.bench() is None
    (d / "bench.json").write_text(json.dumps({"format_version": 1, "device": "cpu", "dtype": "float32",
                                              "rows": [{"variant": "original", "k": 0}]}))
    assert v.bench()["rows"][0]["variant"] == "original"
    (d / "eval.json").write_text("{not json")
    assert v.eval_rows() is None  # a damaged optional file is ignored, not fatal


@pytest.mark.parametrize("objective,weight", [("ce", 1.0), ("kl", 1.0), ("ce+kl", 0.5)])
def test_the_elbow_speaks_the_runs_objective(world, tmp_path, objective, weight):
    from hopscotch_core.studio import figures

    d = tmp_path / "obj"
    shutil.copytree(world.example, d)
    m = read_json(d / "manifest.json")
    write_json(d / "manifest.json", {**m, "settings": {**m["settings"], "objective": objective, "kl_weight": weight}})
    (d / "eval.json").unlink(missing_ok=True)
    v = RunView(d)
    res, ov = m["results"], v.overlay().set_index("label")
    want = {"ce": lambda t: res[f"eval_loss_{t}"], "kl": lambda t: res[f"eval_kl_{t}"],
            "ce+kl": lambda t: res[f"eval_loss_{t}"] + weight * res[f"eval_kl_{t}"]}[objective]
    assert ov.loc["hopscotch", "loss"] == pytest.approx(want("trained"))
    assert ov.loc["hopscotch-unscaled", "loss"] == pytest.approx(want("unscaled"))
    assert ("original" in ov.index) == (objective != "kl")  # KL of the original to itself is no point to plot
    fig = figures.elbow(v.rounds(), v.overlay(), **v.objective())
    title = fig.layout.yaxis.title.text
    assert ("KL" in title) == (objective != "ce") and ("NLL" in title) == (objective != "kl")
    marker = next(t for t in fig.data if t.name.startswith("hopscotch trained"))
    assert objective in marker.hovertemplate


# ----------------------------------------------------------------------------------------------- compare
def test_stream_pair_equals_two_greedy_generations_and_leaves_the_model_alone(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = list(compare.stream_pair(model, tok, "what is 2 plus 3?", [0, 2], max_new_tokens=12))
    a, b = steps[-1]
    assert len(steps) <= 12 and all(len(x) <= i + 1 for i, (x, _) in enumerate(steps))
    assert tok.decode(a, skip_special_tokens=True).strip() == generate_text(model, tok, "what is 2 plus 3?",
                                                                             max_new_tokens=12)
    assert tok.decode(b, skip_special_tokens=True).strip() == generate_text(model, tok, "what is 2 plus 3?", [0, 2],
                                                                             max_new_tokens=12)
    assert hc.handle_of(model) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_two_users_interleaving_on_one_model_get_their_own_results(tiny):
    model, tok = tiny
    lock = threading.Lock()
    want = {s: list(compare.stream_pair(model, tok, "hello there", s, max_new_tokens=10))[-1] for s in ((1,), (3,))}
    got = {}

    def user(skip):
        got[skip] = list(compare.stream_pair(model, tok, "hello there", skip, max_new_tokens=10, lock=lock,
                                             hold_s=0))[-1]  # lock per step: the users interleave

    threads = [threading.Thread(target=user, args=(s,)) for s in ((1,), (3,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want and hc.handle_of(model) is None


def test_divergence_and_highlight():
    assert compare.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert compare.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert compare.first_divergence([1, 2], [1, 2, 3]) == 2
    from helpers.models import make_tokenizer

    tok = make_tokenizer()
    ids = tok("ab'c d")["input_ids"]
    head, mark, tail = compare.split_at(tok, ids, 2)
    assert (head, mark, tail) == ("ab", "'", "c d")
    html = compare.highlight_html(tok, ids, 2, "<T>")
    assert "<mark" in html and "&#x27;</mark>" in html and "&lt;T&gt;" in html  # text is escaped
    assert compare.highlight_html(tok, ids, None).count("<mark") == 0


def test_prompt_mmd_and_estimate(tiny, world):
    model, tok = tiny
    answers = RunView(world.example).answers("eval", 2)
    same = compare.prompt_mmd(model, tok, skipped=[], answers=answers)  # the same states on both sides
    mmd = compare.prompt_mmd(model, tok, skipped=[1], answers=answers)
    assert len(mmd) == 4 and mmd[0] == pytest.approx(same[0])  # nothing changes before the skipped block
    assert all(m > s + 1e-3 for m, s in zip(mmd[1:], same[1:]))
    assert hc.handle_of(model) is None
    rows = compare.estimate(model, [1, 3], contexts=(16, 64))
    assert [r["context"] for r in rows] == [16, 64]
    assert all(r["flop_bound"] > 1 and r["kv_cache_bytes_skipped"] * 2 == r["kv_cache_bytes_original"] for r in rows)
    assert rows[0]["param_bytes_compact"] < rows[0]["param_bytes_original"]


def test_explain_gives_cause_and_fix():
    from hopscotch_core.method.data import DataError

    text = explain(DataError("x.jsonl, line 3: not valid JSON"), "reading the prompts")
    assert text.startswith("**Cause:** the data cannot be used: x.jsonl, line 3") and "**Fix:**" in text
    assert "Traceback" not in text
    assert "offline" in cause_and_fix(ModelNotAvailableError("no"))[0]
    assert "another model" in cause_and_fix(AdapterMismatchError("made for m"))[1]
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory")) and is_oom(MemoryError())
    assert "smaller dtype" in cause_and_fix(RuntimeError("DefaultCPUAllocator: not enough memory: out of memory"))[1]
    assert cause_and_fix(KeyError("x"), "doing it")[0].startswith("KeyError while doing it")


@pytest.mark.parametrize("parallel", ["threads", "batch"])
def test_stream_pair_both_parallel_modes_match_separate_greedy_decoding(tiny, parallel):
    model, tok = tiny
    scales = 1 + 0.2 * torch.randn(model.config.num_hidden_layers, 4, generator=torch.Generator().manual_seed(1))
    *_, (a, b) = compare.stream_pair(model, tok, "what is 4 plus 4?", [1], scales, max_new_tokens=9,
                                     parallel=parallel, hold_s=0)
    ids = torch.tensor([encode_prompt(tok, "what is 4 plus 4?", True)])

    def greedy(skip, sc):  # the plain loop: full forward per token, no cache, single configuration
        seq = ids
        with hc.attach(model) as hs, hs.applied(skip, sc), torch.no_grad():
            for _ in range(9):
                nxt = model(seq, use_cache=False).logits[0, -1].argmax().view(1, 1)
                if int(nxt) in (tok.eos_token_id, model.config.eos_token_id):
                    break
                seq = torch.cat([seq, nxt], 1)
        return seq[0, ids.shape[1]:].tolist()

    assert a == greedy([], None) and b == greedy([1], scales)
    assert hc.handle_of(model) is None and torch.get_num_threads() >= 1
    lock = threading.Lock()
    gen = compare.stream_pair(model, tok, "what is 4 plus 4?", [1], max_new_tokens=9, parallel=parallel, lock=lock)
    next(gen), next(gen)
    gen.close()  # a reader that stops early (a click elsewhere in the app) frees the model and the lock
    assert hc.handle_of(model) is None and lock.acquire(blocking=False)
    with pytest.raises(hc.HopscotchError, match="parallel"):
        next(compare.stream_pair(model, tok, "x", [1], parallel="gpu"))


def test_job_record_updates_from_several_writers_lose_nothing(tmp_path):
    """The app (start, stop) and the job process (exit status) update one record: each change is made under the
    record's file lock, so no writer's fields are lost."""
    jf = tmp_path / ".jobs" / "r.json"
    jf.parent.mkdir()
    write_json(jf, {"name": "r"})

    def writer(i: int) -> None:
        for j in range(25):
            jobs.update(jf, **{f"w{i}_{j}": j})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec = read_json(jf)
    assert len(rec) == 1 + 6 * 25 and rec["name"] == "r"
    assert sorted(p.name for p in jf.parent.iterdir()) == ["r.json", "r.json.lock"]


def test_process_checks_work_through_psutil():
    import os

    me = os.getpid()
    assert jobs.alive(me, jobs._proc_start(me)) and jobs.alive(me, None)
    assert not jobs.alive(me, "12.34")  # another process that had this pid (start time differs)
    assert jobs.alive(me, "4242")        # an older record's /proc clock ticks: not compared
    assert not jobs.alive(-1) and not jobs.alive(None)


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
