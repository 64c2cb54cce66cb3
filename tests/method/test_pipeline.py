"""The whole method as a run: CLI end to end, resume after a crash or kill -9, bad input, run store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.models import make_model, make_tokenizer
from safetensors.torch import load_file

import hopscotch_core as hc
from hopscotch_core import cli
from hopscotch_core.errors import HopscotchError
from hopscotch_core.method import data, pipeline
from hopscotch_core.method.runs import RunError, RunStore, read_jsonl

SMALL = ["--n-calib", "10", "--n-eval", "5", "--max-new-tokens", "10", "--gen-batch", "4", "--epochs", "2"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    with path.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"question": f"what is {i} plus {i + 3}?", "answer": f"#### {2 * i + 3}"}) + "\n")
    return path


@pytest.fixture
def model_dir(tmp_path):
    model = make_model("qwen2", num_hidden_layers=5)
    model.save_pretrained(tmp_path / "m")
    make_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def only_run(runs: Path) -> Path:
    (d,) = [p for p in runs.iterdir() if p.is_dir()]
    return d


@pytest.mark.parametrize("mode", ["paper", "fast"])
def test_cli_run_end_to_end(model_dir, data_file, tmp_path, mode, capsys):
    """The command outside checks run (paper: exactly as they call it; fast: with a shorter answer cap)."""
    runs = tmp_path / "runs"
    rc = cli.main(["run", "--model", str(model_dir), "--data", str(data_file), "--k", "2", "--mode", mode,
                   "--runs-dir", str(runs), "--seed", "0", "--device", "cpu",
                   *([] if mode == "paper" else ["--max-new-tokens", "12"])])
    assert rc == 0, capsys.readouterr().err
    run = only_run(runs)
    m = json.loads((run / "manifest.json").read_text())
    assert m["state"] == "done" and len(m["selected"]) == 2 and len(set(m["selected"])) == 2
    assert all(0 <= b < 5 for b in m["selected"])
    assert m["settings"]["mode"] == mode and m["model"]["num_layers"] == 5 and m["versions"]["torch"]
    split = json.loads((run / "prompts.json").read_text())
    assert len(split["calib"]) == 16 and len(split["eval"]) == 8  # defaults scaled to a 24-record file
    assert not {r["index"] for r in split["calib"]} & {r["index"] for r in split["eval"]}
    assert len(read_jsonl(run / "answers.jsonl")) == 24
    scores = read_jsonl(run / "scores.jsonl")
    assert len([s for s in scores if s["kind"] == "paper"]) == (5 + 4 if mode == "paper" else 4 + 4)
    assert len([s for s in scores if s["kind"] == "shortlist"]) == (0 if mode == "paper" else 5 + 4)
    r = m["results"]
    # training lowers what it minimises: the NLL of the own answers (ce, the paper's) or the KL to the original
    figure = "loss" if m["settings"]["objective"] == "ce" else "kl"
    assert r[f"eval_{figure}_trained"] <= r[f"eval_{figure}_unscaled"] + 1e-3 and r["eval_loss_original"] > 0
    for tag in ("unscaled", "trained"):
        assert r[f"eval_kl_{tag}"] >= 0 and 0 <= r[f"eval_agreement_{tag}"] <= 1
    epochs = pipeline.RunSettings().epochs  # the default
    assert sorted(p.name for p in (run / "scales").iterdir()) == [f"epoch_00{i}.safetensors" for i in range(epochs)]
    model, _ = hc.load_model(model_dir, device="cpu")
    hs = hc.load_adapter(model, run / "adapter")
    assert hs.skipped == tuple(sorted(m["selected"]))
    out = capsys.readouterr().out
    assert f"selected blocks (in order): {m['selected']}" in out


def settings(data_file, **kw):
    base = dict(model="tiny", data=str(data_file), n_calib=10, n_eval=5, max_new_tokens=10, gen_batch=4, k=2,
                mode="paper", epochs=2, baselines=["attn-bi", "random"], device="cpu")
    return pipeline.RunSettings(**{**base, **kw})


class Crash(Exception):
    pass


def crash_after(n: int):
    calls = {"n": 0}

    def on_progress(step, total, info):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash(f"simulated crash at progress event {n} ({info.get('stage')})")

    return on_progress


def outcome(run_dir: Path) -> dict:
    m = json.loads((run_dir / "manifest.json").read_text())
    tensors = load_file(str(run_dir / "adapter" / "scales.safetensors"))
    scales, channels = tensors["scales"], tensors.get("channel_scales")
    base = json.loads((run_dir / "baselines.json").read_text())
    return {"selected": m["selected"], "results": m["results"], "scales": scales.tolist(),
            "channel_scales": None if channels is None else channels.tolist(),
            "lora": {k: v.tolist() for k, v in tensors.items() if k.startswith("lora.")},
            "baselines": {k: (v["attention"], v["eval_loss_trained"]) for k, v in base.items()},
            "scores": [(r["round"], r["kind"], r["candidate"], r["loss"]) for r in read_jsonl(run_dir / "scores.jsonl")]}


OBJECTIVE_SETTINGS = {"paper": {"objective": "ce", "granularity": "scalar", "lora_rank": 0}, "kl-channel": {"objective": "kl", "granularity": "channel"},
                      "ce+kl": {"objective": "ce+kl", "kl_weight": 0.5},
                      "kl-channel-lora": {"objective": "kl", "granularity": "channel", "lora_rank": 2}}


@pytest.mark.parametrize("objective", list(OBJECTIVE_SETTINGS))
@pytest.mark.parametrize("when", [0.1, 0.3, 0.5, 0.7, 0.9])  # generation, selection, training, baselines
def test_resume_after_a_crash_equals_an_uninterrupted_run(data_file, tmp_path, when, objective, monkeypatch):
    model, tok = make_model("llama", num_hidden_layers=4), make_tokenizer()
    s = settings(data_file, **OBJECTIVE_SETTINGS[objective])
    events = []
    ref = pipeline.run_pipeline(s, tmp_path / "a", "r", model=model, tok=tok,
                                on_progress=lambda *a: events.append(a[2].get("stage")))
    # the crashed run generates its own extra training answers (not the shared cache's), so it makes the same
    # progress events as the reference and the crash lands where `when` says
    monkeypatch.setenv("HOPSCOTCH_ANSWERS_DIR", str(tmp_path / "answers-b"))
    crash_at = int(len(events) * when) + 1
    with pytest.raises(Crash):
        pipeline.run_pipeline(s, tmp_path / "b", "r", model=model, tok=tok, on_progress=crash_after(crash_at))
    assert json.loads((tmp_path / "b" / "r" / "manifest.json").read_text())["state"] == "failed"
    again = pipeline.run_pipeline(s, tmp_path / "b", "r", model=model, tok=tok)
    assert again.manifest["state"] == "done"
    assert outcome(again.dir) == outcome(ref.dir)


@pytest.mark.subprocess
@pytest.mark.parametrize("objective", [["--objective", "ce", "--granularity", "scalar"],
                                       ["--objective", "kl", "--granularity", "channel"]],
                         ids=["paper", "kl-channel"])
def test_kill_9_at_any_moment_then_resume(model_dir, data_file, tmp_path, objective):
    args = ["run", "--model", str(model_dir), "--data", str(data_file), "--k", "2", "--mode", "paper",
            "--runs-dir", str(tmp_path / "runs"), "--name", "r", "--seed", "0", "--device", "cpu", *objective,
            *SMALL]
    assert cli.main(args[:-len(SMALL)] + SMALL + ["--runs-dir", str(tmp_path / "ref")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "hopscotch_core.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "runs" / "r" / "answers.jsonl").exists():
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = {m["name"]: m["state"] for m in RunStore(tmp_path / "runs").list()}
    assert listed["r"] in ("interrupted", "created", "done")  # never "running": its process is gone
    assert cli.main(args) == 0
    got, ref = tmp_path / "runs" / "r", tmp_path / "ref" / "r"
    m, mr = (json.loads((d / "manifest.json").read_text()) for d in (got, ref))
    assert m["selected"] == mr["selected"] and m["results"] == mr["results"]
    a, b = (load_file(str(d / "adapter/scales.safetensors")) for d in (got, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ("channel_scales" in a) == ("channel" in objective)


def test_should_stop_saves_state_and_resumes(data_file, tmp_path):
    model, tok = make_model("llama", num_hidden_layers=4), make_tokenizer()
    s = settings(data_file, baselines=[])
    events = []
    run = pipeline.run_pipeline(s, tmp_path, "r", model=model, tok=tok,
                                on_progress=lambda *a: events.append(a), should_stop=lambda: len(events) >= 6)
    assert run.manifest["state"] == "stopped"
    assert pipeline.run_pipeline(s, tmp_path, "r", model=model, tok=tok).manifest["state"] == "done"


def test_resume_with_other_settings_is_refused(data_file, tmp_path):
    model, tok = make_model("llama", num_hidden_layers=4), make_tokenizer()
    pipeline.run_pipeline(settings(data_file, baselines=[]), tmp_path, "r", model=model, tok=tok,
                          stages=("prompts",))
    with pytest.raises(RunError, match=r"other settings.*k: 2 -> 3.*seed: 0 -> 1"):
        pipeline.run_pipeline(settings(data_file, baselines=[], k=3, seed=1), tmp_path, "r", model=model, tok=tok)


def test_given_skip_set_is_trained_not_selected(model_dir, data_file, tmp_path):
    rc = cli.main(["train", "--model", str(model_dir), "--data", str(data_file), "--skip", "1,3",
                   "--runs-dir", str(tmp_path), "--name", "t", "--device", "cpu", *SMALL])
    assert rc == 0
    m = RunStore(tmp_path).open("t").manifest
    assert m["selected"] == [1, 3] and m["selection"]["status"] == "given" and m["results"]["eval_loss_trained"]
    assert not (tmp_path / "t" / "scores.jsonl").exists()


def test_reproducible_with_the_same_seed(model_dir, data_file, tmp_path):
    for name in ("a", "b"):
        assert cli.main(["run", "--model", str(model_dir), "--data", str(data_file), "--k", "2", "--runs-dir",
                         str(tmp_path), "--name", name, "--device", "cpu", "--seed", "3", *SMALL]) == 0
    a, b = (RunStore(tmp_path).open(n) for n in "ab")
    assert a.manifest["selected"] == b.manifest["selected"] and a.manifest["results"] == b.manifest["results"]


def run_cli(args, capsys):
    rc = cli.main(args)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("content,extra,match", [
    ("", [], "holds no records"),
    ('{"question": "a"}\n{oops\n', [], "line 2: not valid JSON"),
    ('{"question": "a"}\n{"question": "b"}\n', ["--column", "prompt"], "no column 'prompt'"),
    ('{"question": "a"}\n{"question": "b"}\n', ["--k", "5"], "this model has 5 attention blocks"),
    ('{"question": "a"}\n{"question": "b"}\n', ["--mode", "magic"], "unknown mode 'magic'"),
    ('{"question": "a"}\n{"question": "b"}\n', ["--n-calib", "5", "--n-eval", "5"], "has only 2"),
    ('{"question": "a"}\n{"question": "b"}\n', ["--name", "../escape"], "not allowed"),
])
def test_bad_input_is_one_clear_line(model_dir, tmp_path, capsys, content, extra, match):
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    rc, err = run_cli(["run", "--model", str(model_dir), "--data", str(f), "--runs-dir", str(tmp_path / "runs"),
                       "--device", "cpu", *extra], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip().splitlines()[0]] and err.startswith("error: ") and match in err
    runs = tmp_path / "runs"
    if "--n-calib" not in extra:  # nothing was started: no run directory is left behind
        assert not runs.exists() or not any(runs.iterdir())


def test_runs_root_not_writable(model_dir, data_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = run_cli(["run", "--model", str(model_dir), "--data", str(data_file), "--runs-dir",
                       str(blocker / "runs"), "--device", "cpu"], capsys)
    assert rc == 2 and "not writable" in err


def test_run_names_cannot_escape(tmp_path):
    store = RunStore(tmp_path / "runs")
    for bad in ("../x", "a/b", "..", ".hidden", "", "x" * 200):
        with pytest.raises(RunError):
            store.path(bad)
    assert store.path("ok-name_1.2").parent == (tmp_path / "runs").resolve()


def test_runs_lists_runs(model_dir, data_file, tmp_path, capsys):
    assert cli.main(["generate", "--model", str(model_dir), "--data", str(data_file), "--runs-dir", str(tmp_path),
                     "--name", "g", "--device", "cpu", *SMALL]) == 0
    capsys.readouterr()
    assert cli.main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "g" in out and "generated" in out


def test_select_stops_after_selection(model_dir, data_file, tmp_path):
    assert cli.main(["select", "--model", str(model_dir), "--data", str(data_file), "--k", "1", "--runs-dir",
                     str(tmp_path), "--name", "s", "--device", "cpu", *SMALL]) == 0
    m = RunStore(tmp_path).open("s").manifest
    assert m["state"] == "selected" and len(m["selected"]) == 1 and not m["results"]
    assert not (tmp_path / "s" / "scales").exists()


def test_resume_by_name_uses_the_runs_own_settings(model_dir, data_file, tmp_path):
    assert cli.main(["generate", "--model", str(model_dir), "--data", str(data_file), "--k", "1", "--runs-dir",
                     str(tmp_path), "--name", "x", "--device", "cpu", *SMALL]) == 0
    assert cli.main(["run", "--resume", "x", "--runs-dir", str(tmp_path)]) == 0
    m = RunStore(tmp_path).open("x").manifest
    assert m["state"] == "done" and len(m["selected"]) == 1 and m["settings"]["n_calib"] == 10
    assert cli.main(["run", "--resume", "nope", "--runs-dir", str(tmp_path)]) == 2


def test_kl_channel_run_records_its_objective_and_keeps_the_teacher(model_dir, data_file, tmp_path):
    wall, cpu = time.perf_counter(), time.process_time()
    rc = cli.main(["train", "--model", str(model_dir), "--data", str(data_file), "--skip", "1,3", "--objective", "kl",
                   "--granularity", "channel", "--runs-dir", str(tmp_path), "--name", "t", "--device", "cpu", *SMALL])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert rc == 0
    run = tmp_path / "t"
    m = json.loads((run / "manifest.json").read_text())
    assert m["settings"]["objective"] == "kl" and m["settings"]["granularity"] == "channel"
    assert (run / "teacher.safetensors").is_file() and "teacher" in m["timings"]
    # every timed stage has its CPU seconds too (this process's, all threads), and the model its size
    assert set(m["cpu_timings"]) == set(m["timings"]) >= {"prompts", "generate", "teacher", "train"}
    # the stages ran one after another inside the call: their wall and CPU seconds add up to no more than the
    # call's own (less by what runs outside a stage: loading the model, writing the adapter); each stage's time is
    # rounded to 0.01 s, hence the slack
    slack = 0.005 * len(m["timings"])
    assert 0 < sum(m["timings"].values()) <= wall + slack, (m["timings"], wall)
    assert 0 < sum(m["cpu_timings"].values()) <= cpu + slack, (m["cpu_timings"], cpu)
    assert m["timings"]["train"] > 0 and m["cpu_timings"]["train"] > 0
    assert m["model"]["params"] == sum(p.numel() for p in hc.load_model(model_dir, device="cpu")[0].parameters())
    meta = json.loads((run / "adapter" / "hopscotch.json").read_text())
    assert meta["objective"] == "kl" and meta["granularity"] == "channel"
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["stage"] == "train"]
    assert all(0 <= r["train_loss"] < 5 for r in epochs)  # a KL, not a cross-entropy of ~log(101)
    model, _ = hc.load_model(model_dir, device="cpu")
    hs = hc.load_adapter(model, run / "adapter", granularity="channel")
    last = load_file(str(run / "scales" / "epoch_001.safetensors"))
    assert torch.equal(hs.effective_channel_scales(), last["channel_scales"])
    assert any(k.startswith("channel.") for k in last)  # the vectors' Adam moments, for resume


def test_runs_older_than_the_objective_settings_resume_as_the_paper(data_file, tmp_path):
    model, tok = make_model("llama", num_hidden_layers=4), make_tokenizer()
    s = settings(data_file, baselines=[], objective="ce", granularity="scalar", lora_rank=0)
    pipeline.run_pipeline(s, tmp_path, "r", model=model, tok=tok, stages=("prompts",))
    path = tmp_path / "r" / "manifest.json"
    m = json.loads(path.read_text())
    for key in ("objective", "kl_weight", "granularity", "lora_rank", "lora_lr"):
        del m["settings"][key]
    path.write_text(json.dumps(m))
    old = pipeline.RunSettings.from_manifest(m["settings"])
    assert (old.objective, old.granularity, old.is_paper) == ("ce", "scalar", True)
    assert pipeline.run_pipeline(s, tmp_path, "r", model=model, tok=tok, stages=("prompts",)).manifest["state"]
    with pytest.raises(RunError, match=r"objective: 'ce' -> 'kl'"):
        pipeline.run_pipeline(settings(data_file, baselines=[], objective="kl", granularity="scalar", lora_rank=0),
                              tmp_path, "r", model=model, tok=tok)


@pytest.mark.subprocess
def test_a_healed_run_trains_saves_and_exports_its_deltas(model_dir, data_file, tmp_path):
    """--lora-rank: selection scores without deltas, training adds them; epoch files keep them and their Adam
    moments (resume), the adapter records the rank, and the hf export from the adapter carries them."""
    rc = cli.main(["run", "--model", str(model_dir), "--data", str(data_file), "--k", "1", "--objective", "kl",
                   "--granularity", "channel", "--lora-rank", "2", "--lora-lr", "0.01", "--runs-dir", str(tmp_path),
                   "--name", "h", "--device", "cpu", *SMALL])
    assert rc == 0
    run = tmp_path / "h"
    m = json.loads((run / "manifest.json").read_text())
    assert m["settings"]["lora_rank"] == 2 and m["results"]["eval_kl_trained"] < m["results"]["eval_kl_unscaled"]
    meta = json.loads((run / "adapter" / "hopscotch.json").read_text())
    assert meta["lora_rank"] == 2
    last = load_file(str(run / "scales" / "epoch_001.safetensors"))
    assert last["lora.0.attn.A"].shape == (2, 32) and last["lora.0.mlp.B"].abs().sum() > 0
    assert any(k.startswith("lora_adam.") for k in last)
    model, _ = hc.load_model(model_dir, device="cpu")
    hs = hc.load_adapter(model, run / "adapter", lora_rank=2)
    assert all(torch.equal(v, last["lora." + k]) for k, v in hs.lora_state().items())
    ids = torch.tensor([[5, 9, 14, 3, 22, 7]])
    with torch.no_grad():
        ref = model(ids).logits.double()
    hs.detach()
    assert cli.main(["export", "--model", str(model_dir), "--adapter", str(run / "adapter"), "--format", "hf",
                     "--out", str(tmp_path / "hf"), "--device", "cpu"]) == 0
    code = ("import sys, torch, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "print(m(torch.tensor([[5, 9, 14, 3, 22, 7]])).logits.double().flatten().tolist())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")], capture_output=True, text=True,
                         check=True).stdout  # stock transformers, a fresh process, the folder alone
    got = torch.tensor(json.loads(out)).view_as(ref)
    assert ((ref - got).abs().max() / ref.abs().max()).item() <= 1e-4


def test_training_reads_more_prompts_than_the_selection_and_shares_their_answers(data_file, tmp_path):
    """--n-train: the final training reads the calibration prompts and the next ones of the same seeded order
    (never a held-out one); their answers are generated once and a later run of the same model and data reads
    them from the shared cache; the deltas start from the least-squares fit."""
    model, tok = make_model("llama", num_hidden_layers=4), make_tokenizer()
    s = settings(data_file, n_calib=6, n_eval=5, n_train=12, blocks=[2], baselines=["random"], objective="kl",
                 granularity="channel", lora_rank=2, delta_init="lsq")
    run = pipeline.run_pipeline(s, tmp_path, "a", model=model, tok=tok)
    split = json.loads((run.dir / "prompts.json").read_text())
    calib, held, extra = ({r["index"] for r in split[k]} for k in ("calib", "eval", "train_extra"))
    assert len(calib) == 6 and len(held) == 5 and len(extra) == 6 and not (calib | held) & extra
    assert sorted(extra) == data.extra_indices(24, 6, 5, 6, 0)
    # a larger n-train adds prompts and keeps the others
    assert set(data.extra_indices(24, 6, 5, 3, 0)) <= extra
    assert len(read_jsonl(run.dir / "train-answers.jsonl")) == 6 and (run.dir / "teacher-train.safetensors").is_file()
    m = run.manifest
    assert m["data"]["train_extra_examples"] == 6 and m["data"]["train_rows"] > m["data"]["calib_rows"]
    fits = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r["stage"] == "delta-init"]
    assert len(fits) == 1 and fits[0]["fits"][0]["layer"] == 1 and 0 < fits[0]["fits"][0]["explained"] <= 1
    assert m["results"]["eval_kl_trained"] < m["results"]["eval_kl_unscaled"]
    # the baseline trains every part Hopscotch's set trains, on the same rows: deltas (least-squares start) too
    base = json.loads((run.dir / "baselines.json").read_text())["random"]
    last = load_file(str(run.dir / "scales-random" / "epoch_001.safetensors"))
    assert last["lora.0.mlp.B"].shape == (32, 2) and any(k.startswith("lora_adam.") for k in last)
    starts = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r["stage"] == "delta-init-random"]
    assert len(starts) == 1 and [f["block"] for f in starts[0]["fits"]] == [b for b in base["attention"] if b]
    steps = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r["stage"] in ("train", "train-random")]
    assert {r["rows"] for r in steps} == {m["data"]["train_rows"]}  # both read every training row each epoch
    # a second run of the same model and data: the extra answers come from the shared cache, equal
    again = pipeline.run_pipeline(s, tmp_path, "b", model=model, tok=tok)
    assert "6 training answers from the shared answer cache" in (again.dir / "log.txt").read_text()
    assert read_jsonl(again.dir / "train-answers.jsonl") == read_jsonl(run.dir / "train-answers.jsonl")
    assert again.manifest["results"] == m["results"]


def test_training_prompts_are_checked_before_any_work(data_file, tmp_path):
    model, tok = make_model("llama", num_hidden_layers=4), make_tokenizer()
    with pytest.raises(HopscotchError, match="at least n-calib"):
        pipeline.run_pipeline(settings(data_file, n_train=4), tmp_path, "r", model=model, tok=tok)
    with pytest.raises(HopscotchError, match="14 more training"):
        pipeline.run_pipeline(settings(data_file, n_train=24), tmp_path, "r", model=model, tok=tok)
    assert not (tmp_path / "r").exists()
