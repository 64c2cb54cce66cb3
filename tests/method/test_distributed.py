"""One pipeline over 2 processes (torch.distributed, gloo on CPU): the same selection, answers and scalars as one
process; a dead rank stops the other with one clear error; the run resumes with any number of processes.

The multi-process tests launch `python -m torch.distributed.run --nproc-per-node 2 -m hopscotch_core run ...`
(exactly what users run) or the two ranks by hand with torchrun's environment (multi-node style), on a tiny random
model; the one-process reference is the CLI in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers.models import make_model, make_tokenizer
from safetensors.torch import load_file

from hopscotch_core import cli
from hopscotch_core.engine.scaling import attach
from hopscotch_core.method import data, distributed, training
from hopscotch_core.method.runs import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--n-calib", "12", "--n-eval", "5", "--max-new-tokens", "10", "--gen-batch", "3", "--epochs", "2",
         "--batch-tokens", "64", "--seed", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data_file = root / "prompts.jsonl"
    with data_file.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"question": f"what is {i} plus {i + 3}? and {i * 7}", "answer": f"#### {2 * i + 3}"})
                    + "\n")
    model = make_model("qwen2", num_hidden_layers=5)
    model.save_pretrained(root / "m")
    make_tokenizer().save_pretrained(root / "m")
    return root, root / "m", data_file


def env(**extra: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in distributed.ENV and not k.startswith(("TORCHELASTIC",
                                                                                                "PET_"))}
    e.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return e


def torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "hopscotch_core", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def by_hand(args_of_rank: list[list[str]]) -> list[subprocess.Popen]:
    """The ranks started as torchrun would on several machines: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT."""
    port, n = free_port(), len(args_of_rank)
    return [subprocess.Popen([sys.executable, "-m", "hopscotch_core", *a], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                                     MASTER_PORT=str(port)))
            for r, a in enumerate(args_of_rank)]


def outcome(run: Path) -> dict:
    m = json.loads((run / "manifest.json").read_text())
    out = {"selected": m["selected"], "state": m["state"],
           "scores": {(r["round"], r["kind"], r["candidate"]): r["loss"] for r in read_jsonl(run / "scores.jsonl")},
           "score_order": [(r["round"], r["kind"], r["candidate"]) for r in read_jsonl(run / "scores.jsonl")],
           "answers": sorted(json.dumps(a, sort_keys=True) for a in read_jsonl(run / "answers.jsonl"))}
    if (run / "adapter").is_dir():
        out["scales"] = load_file(str(run / "adapter" / "scales.safetensors"))["scales"]
        out["results"] = m["results"]
    if (run / "baselines.json").is_file():
        out["baselines"] = json.loads((run / "baselines.json").read_text())
    return out


def assert_same(got: dict, ref: dict) -> None:
    assert got["selected"] == ref["selected"] and got["state"] == ref["state"]
    assert got["answers"] == ref["answers"]
    assert got["score_order"] == ref["score_order"]  # every candidate of every round, in the same order
    assert max(abs(got["scores"][k] - ref["scores"][k]) for k in ref["scores"]) < 1e-5
    if "scales" in ref:
        assert torch.allclose(got["scales"], ref["scales"], atol=1e-5, rtol=0)
        for key, val in ref["results"].items():
            assert got["results"][key] == pytest.approx(val, abs=1e-5), key
    if "baselines" in ref:
        for name, entry in ref["baselines"].items():
            assert got["baselines"][name]["attention"] == entry["attention"]
            assert got["baselines"][name]["eval_loss_trained"] == pytest.approx(entry["eval_loss_trained"], abs=1e-5)


def reference(world, tmp_path, command: list[str]) -> dict:
    assert cli.main(command + ["--runs-dir", str(tmp_path / "ref"), "--name", "r"]) == 0
    return outcome(tmp_path / "ref" / "r")


# ------------------------------------------------------------------------------------------------ in-process
def test_split_row_parts_add_up_to_the_row():
    """Data-parallel training deals a row's examples over the ranks: the parts' loss sums and their gradients must
    add up to the whole row's (checked against the row itself, and against each example on its own)."""
    torch.manual_seed(0)
    model = make_model("llama")
    examples = [data.Example(list(range(3, 3 + n)), [-100] * 2 + list(range(5, 3 + n))) for n in (9, 6, 11, 4, 7)]
    [row] = data.pack(examples, batch_tokens=1000)
    parts = data.split_row(row, 3)
    assert [p.n_examples for p in parts] == [2, 2, 1]
    assert sorted(i for p in parts for i in p.example_ids) == list(range(5))
    assert sum(p.n_tokens for p in parts) == row.n_tokens
    with torch.no_grad():
        whole = float(data.row_loss(model, row, "sum"))
        alone = sum(float(data.row_loss(model, data.pack([e], 1000)[0], "sum")) for e in examples)
        split = sum(float(data.row_loss(model, p, "sum")) for p in parts)
    assert split == pytest.approx(whole, rel=1e-5) and split == pytest.approx(alone, rel=1e-5)
    assert data.split_row(data.pack(examples[:1], 1000)[0], 2)[1] is None  # more ranks than examples


def _ranks(rank: int, world: int, store_file: str, out_dir: str) -> None:
    """Body of each spawned rank (gloo over a FileStore)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_file, world), rank=rank, world_size=world)
    g = distributed.Group(rank, world, rank, "gloo", timeout_s=60)
    res: dict = {}
    computed = []
    got = []

    def upper(x: str) -> str:
        computed.append(x)
        return x.upper()

    g.shard_map(list("abcde"), upper, lambda x, y: got.append((x, y)))
    res["computed"], res["got"] = computed, got
    res["any"] = [g.any(rank == 1), g.any(False)]
    try:
        g.same({"k": 2 + rank}, "settings")
    except distributed.SharedError as e:
        res["same"] = str(e)
    def check() -> int:
        if rank == 1:
            raise ValueError("bad on 1")
        return 7

    try:
        g.check_all(check)
    except distributed.SharedError as e:
        res["check_all"] = str(e)
    # data-parallel scale training: the same scalars as one process over the whole rows
    model = make_model("llama", num_hidden_layers=3)
    examples = [data.Example(list(range(3, 3 + n)), [-100] * 2 + list(range(5, 3 + n))) for n in (9, 6, 11, 4, 7, 5)]
    rows = data.pack(examples, batch_tokens=12)
    with attach(model) as hs:
        hs.skip([1])
        r = training.train_scales(hs, rows, rows[:2], training.TrainConfig(lr=5e-2, epochs=2, seed=3), group=g)
        res["scales"] = r.scales.tolist()
        res["epochs"] = r.epochs
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))


@pytest.mark.subprocess  # spawns the two ranks
def test_collectives_and_data_parallel_training_in_process(tmp_path):
    """Two gloo ranks in spawned processes: candidates dealt round-robin (a, c, e on rank 0; b, d on rank 1) and
    gathered in item order on both; a stop on one rank is seen on both; different settings and a failed check are
    one SharedError on both ranks; data-parallel training gives the one-process scalars within 1e-5."""
    # two fresh interpreters (not multiprocessing's spawn, whose children inherit the parent's sys.path as the
    # earlier tests left it): each imports this module and runs its rank
    here = Path(__file__).resolve().parent
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from test_distributed import _spawned; "
            "_spawned(int(sys.argv[3]), 2, sys.argv[4], sys.argv[5])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(here.parent), str(here), str(rank),
                               str(tmp_path / "store"), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    outs = [pr.communicate(timeout=240)[0] for pr in procs]
    assert [pr.returncode for pr in procs] == [0, 0], "\n".join(outs)[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["computed"] == ["a", "c", "e"] and r1["computed"] == ["b", "d"]
    assert r0["got"] == r1["got"] == [[x, x.upper()] for x in "abcde"]
    assert r0["any"] == r1["any"] == [True, False]
    assert r0["same"] == r1["same"] and "different settings" in r0["same"] and "k: 2 vs 3" in r0["same"]
    assert r0["check_all"] == r1["check_all"] == "rank 1: bad on 1"
    # reference: one process, whole rows
    model = make_model("llama", num_hidden_layers=3)
    examples = [data.Example(list(range(3, 3 + n)), [-100] * 2 + list(range(5, 3 + n))) for n in (9, 6, 11, 4, 7, 5)]
    rows = data.pack(examples, batch_tokens=12)
    assert len(rows) >= 3 and any(r.n_examples == 1 for r in rows) and any(r.n_examples > 1 for r in rows)
    with attach(model) as hs:
        hs.skip([1])
        ref = training.train_scales(hs, rows, rows[:2], training.TrainConfig(lr=5e-2, epochs=2, seed=3))
    assert (ref.scales - 1).abs().max() > 1e-2  # the scalars moved
    for r in (r0, r1):
        assert torch.allclose(torch.tensor(r["scales"]), ref.scales, atol=1e-5, rtol=0)
        for a, b in zip(r["epochs"], ref.epochs):
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
            assert a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-5)


def _spawned(rank: int, world: int, store_file: str, out_dir: str) -> None:
    _ranks(rank, world, store_file, out_dir)


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.subprocess
def test_torchrun_paper_run_equals_one_process(world, tmp_path):
    """The whole method (answers, paper-mode selection, scale training, baselines) over 2 ranks with torchrun."""
    _, model_dir, data_file = world
    command = ["run", "--model", str(model_dir), "--data", str(data_file), "--k", "2", "--mode", "paper",
               "--baselines", "attn-bi,one-round", *SMALL]
    ref = reference(world, tmp_path, command)
    res = torchrun(command + ["--runs-dir", str(tmp_path / "dist"), "--name", "r"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("selected blocks (in order)") == 1  # rank 0 alone reports
    got = outcome(tmp_path / "dist" / "r")
    assert_same(got, ref)
    assert json.loads((tmp_path / "dist" / "r" / "manifest.json").read_text())["world_size"] == 2
    assert len(got["score_order"]) == 5 + 4 and len(got["answers"]) == 17


@pytest.mark.subprocess
def test_torchrun_fast_mode_with_idle_ranks(world, tmp_path):
    """Fast mode with a shortlist of 1: the paper scoring of each round has one candidate for 2 ranks (one rank
    waits); the shortlist scores (untrained loss) are spread over both."""
    _, model_dir, data_file = world
    command = ["select", "--model", str(model_dir), "--data", str(data_file), "--k", "3", "--mode", "fast",
               "--shortlist", "1", "--shortlist-by", "loss", *SMALL]
    ref = reference(world, tmp_path, command)
    res = torchrun(command + ["--runs-dir", str(tmp_path / "dist"), "--name", "r"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(outcome(tmp_path / "dist" / "r"), ref)
    assert sum(k[1] == "paper" for k in ref["score_order"]) == 3


@pytest.mark.subprocess
def test_a_dead_rank_stops_the_other_then_resume_with_one_process(world, tmp_path):
    """Rank 1 is killed mid-selection: rank 0 stops within seconds with one `error:` line (no traceback, exit 2);
    the same command with one process then finishes with the one-process result, keeping every recorded score."""
    _, model_dir, data_file = world
    command = ["select", "--model", str(model_dir), "--data", str(data_file), "--k", "3", "--mode", "paper", *SMALL]
    ref = reference(world, tmp_path, command)
    args = command + ["--runs-dir", str(tmp_path / "runs"), "--name", "r"]
    p0, p1 = by_hand([args, args])
    scores = tmp_path / "runs" / "r" / "scores.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not scores.is_file() and p0.poll() is None:
        time.sleep(0.01)
    os.kill(p1.pid, signal.SIGSTOP)  # freeze rank 1 mid-selection, then kill it
    before = read_jsonl(scores)
    t = time.time()
    os.kill(p1.pid, signal.SIGKILL)
    p1.wait()
    _, err = p0.communicate(timeout=60)
    assert time.time() - t < 30
    assert p0.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lost contact" in lines[0] and "Traceback" not in err, err[-2000:]
    m = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert m["state"] == "failed" and m["world_size"] == 2
    assert 1 <= len(before) < len(ref["score_order"])  # it died mid-selection
    assert cli.main(args) == 0  # resume: one process
    got = outcome(tmp_path / "runs" / "r")
    assert_same(got, ref)
    after = read_jsonl(scores)
    assert after[:len(before)] == before  # the scores recorded before the kill are kept, not recomputed
    assert json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())["world_size"] == 1


@pytest.mark.subprocess
def test_torchrun_with_a_killed_worker_ends_without_hanging(world, tmp_path):
    """A worker killed under torchrun: the whole launch ends (non-zero) within a bounded time."""
    _, model_dir, data_file = world
    args = ["select", "--model", str(model_dir), "--data", str(data_file), "--k", "3", "--mode", "paper", *SMALL,
            "--runs-dir", str(tmp_path / "runs"), "--name", "r"]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "hopscotch_core", *args], env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    answers = tmp_path / "runs" / "r" / "answers.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not answers.is_file() and proc.poll() is None:
        time.sleep(0.01)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "hopscotch_core" in " ".join(
        c.cmdline())]
    victim = next(c for c in workers if c.environ().get("RANK") == "1")
    t = time.time()
    victim.kill()
    proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.time() - t < 60
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in workers)


@pytest.mark.subprocess
def test_bad_input_one_message(world, tmp_path):
    """Settings that differ between ranks: refused on every rank, one `error:` line in all; a world without a
    rendezvous address: one clear line, exit 2, no traceback."""
    _, model_dir, data_file = world
    base = ["run", "--model", str(model_dir), "--data", str(data_file), "--mode", "paper", *SMALL, "--runs-dir",
            str(tmp_path / "runs")]
    procs = by_hand([base + ["--k", "2"], base + ["--k", "3"]])
    outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    lines = [line for _, err in outs for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "different settings" in lines[0] and "k: 2 vs 3" in lines[0], outs
    assert not (tmp_path / "runs").is_dir() or not any((tmp_path / "runs").iterdir())  # nothing written
    res = subprocess.run([sys.executable, "-m", "hopscotch_core", *base, "--k", "2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False, env=env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert "MASTER_ADDR" in line and "torchrun" in line


# ------------------------------------------------------------------------------------------------ app jobs
def test_threads_per_process_share_the_cores():
    from hopscotch_core.studio import jobs

    assert [jobs.threads_per_process(n, 8) for n in (1, 2, 3, 4, 8, 16)] == [8, 4, 2, 2, 1, 1]
    assert jobs.torchrun_args(["run", "--k", "2"], 4) == ["--standalone", "--nproc-per-node", "4", "-m",
                                                          "hopscotch_core", "run", "--k", "2"]
    with pytest.raises(jobs.JobError, match="only run, generate, select, train"):
        jobs.start(["export", "--out", "x"], "runs-never-made", "x", nproc=2)


@pytest.mark.subprocess
def test_app_job_on_two_processes(world, tmp_path):
    """jobs.start(..., nproc=2): the job runs torchrun with cores // 2 threads per process; the run is the
    one-process run (world_size 2 in its manifest), its exit status and the command are recorded."""
    from hopscotch_core.studio import jobs

    _, model_dir, data_file = world
    command = ["select", "--model", str(model_dir), "--data", str(data_file), "--k", "2", "--mode", "paper", *SMALL]
    ref = reference(world, tmp_path, command)
    runs = tmp_path / "runs"
    rec = jobs.start(command, runs, "r", nproc=2, env={"PYTHONPATH": str(ROOT)})
    assert rec["nproc"] == 2
    deadline = time.time() + 120
    while time.time() < deadline and jobs.is_alive(runs, "r"):
        time.sleep(0.2)
    s = jobs.status(runs, "r")
    assert s["state"] == "selected" and jobs.record(runs, "r")["returncode"] == 0, s
    log = jobs.log_file(runs, "r").read_text()
    assert f"$ OMP_NUM_THREADS={jobs.threads_per_process(2)} torchrun --standalone --nproc-per-node 2 -m " \
           "hopscotch_core select" in log
    assert_same(outcome(runs / "r"), ref)
    assert json.loads((runs / "r" / "manifest.json").read_text())["world_size"] == 2


@pytest.mark.subprocess
def test_app_job_on_two_processes_stops_cleanly_and_resumes(world, tmp_path):
    """Stop (SIGTERM) reaches torchrun's ranks through the job process: both stop at the same step with the state
    saved (run state "stopped"), and the run then resumes on one process to the one-process result."""
    from hopscotch_core.studio import jobs

    _, model_dir, data_file = world
    command = ["run", "--model", str(model_dir), "--data", str(data_file), "--k", "1", "--mode", "paper", *SMALL,
               "--epochs", "400"]
    runs = tmp_path / "runs"
    jobs.start(command, runs, "r", nproc=2, env={"PYTHONPATH": str(ROOT)})
    metrics = runs / "r" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not metrics.is_file() and jobs.is_alive(runs, "r"):
        time.sleep(0.05)
    assert metrics.is_file(), jobs.status(runs, "r")
    assert jobs.stop(runs, "r")
    t = time.time()
    while time.time() < deadline + 60 and jobs.is_alive(runs, "r"):
        time.sleep(0.1)
    assert time.time() - t < 30  # before torchrun's 30 s grace period ends in SIGKILL
    m = json.loads((runs / "r" / "manifest.json").read_text())
    assert m["state"] == "stopped" and m["world_size"] == 2, jobs.status(runs, "r")
    done = len(read_jsonl(metrics))
    assert 1 <= done < 400
    epochs = [r["epoch"] for r in read_jsonl(metrics) if r["stage"] == "train"]
    assert epochs == list(range(len(epochs)))
    # resume on one process (Python API, stopped again two epochs later): training continues at the next epoch
    from hopscotch_core.method import pipeline

    pipeline.run_pipeline(pipeline.RunSettings(**m["settings"]), str(runs), "r",
                          should_stop=lambda: len([r for r in read_jsonl(metrics) if r["stage"] == "train"])
                          >= len(epochs) + 2)
    again = [r["epoch"] for r in read_jsonl(metrics) if r["stage"] == "train"]
    assert again == list(range(len(epochs) + 2))  # no epoch lost or repeated
    m = json.loads((runs / "r" / "manifest.json").read_text())
    assert m["state"] == "stopped" and m["world_size"] == 1
