"""studio/jobs.py: jobs are real `hopscotch` CLI processes on a tiny model (~6 s each), found again from their
files; stop, resume, failure, a dead process, the job record's file lock."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from hopscotch_core.method.runs import read_json, write_json
from hopscotch_core.studio import jobs
from hopscotch_core.studio.runview import list_runs


def wait(runs, name, until=lambda s: not s["alive"], timeout=120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = jobs.status(runs, name)
        if until(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"job {name} did not get there in {timeout} s: {jobs.status(runs, name)}")


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
