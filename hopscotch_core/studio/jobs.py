"""Long jobs (selection, scale training, export) as `hopscotch` CLI processes that outlive the UI that started them.

    rec = jobs.start(["run", "--model", "default", "--k", "4"], runs_dir="runs", name="my-run")
    jobs.status("runs", "my-run")     # state, stage, step/total, alive, error, log tail
    jobs.stop("runs", "my-run")       # SIGTERM: the CLI finishes the current step, saves its state, exits
    jobs.start(["run", "--resume", "my-run"], "runs", "my-run")             # continue it later

A job is one process, `python -m hopscotch_core.studio.jobrunner JOBFILE -- ARGS`: the CLI's `main(ARGS)` in-process
(so SIGTERM reaches the CLI's graceful-stop handler), plus a record of its exit code. A pipeline job on N > 1 local
processes (`start(..., nproc=N)`) runs torchrun in that process instead (`torchrun --standalone --nproc-per-node N -m
hopscotch_core ARGS`, torch.distributed.run in-process) with OMP_NUM_THREADS = cores // N, so the processes do not
oversubscribe the cores; SIGTERM reaches torchrun, which passes it to the ranks (they stop together at the next
step, or are killed after 30 s: the run resumes from its last saved step either way). The record lives beside the
runs, in `RUNS/.jobs/NAME.json` (command, pid, start time, stop request, exit code, error) with the job's
stdout and stderr in `RUNS/.jobs/NAME.log`. Pipeline commands (run/generate/select/train) get `--runs-dir RUNS
--name NAME`, so their run directory is `RUNS/NAME`, where the CLI also keeps `progress.json` current. The
command lines (the one run, the one shown in the app and in the log) come from studio/commands.py. Everything
is read back from files: a reloaded page, another browser tab or a restarted app finds its jobs again. Jobs run in
their own session (a Ctrl-C on the app's terminal does not reach them) and load their own copy of the model.

No UI here; the Streamlit pages call these functions and poll `status`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock

from ..errors import JobError
from ..method import estimate, runs
from ..method.runs import (
    ACTIVE,  # noqa: F401 - the job states whose process is alive, as before
    MANIFEST,
    RunError,
    RunStore,
    check_name,
    pid_exists,
    read_json,
    write_json,
)
from .progress import read_progress
from .commands import (  # noqa: F401 - the command lines, importable from here as before
    PIPELINE_COMMANDS,
    cli_args,
    command_line,
    command_of,
    job_args,
    shown,
    threads_per_process,
    torchrun_args,
)

JOBS_DIR = ".jobs"
RUNNER = "hopscotch_core.studio.jobrunner"  # the module a job process runs (python -m)

_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this Python process started (polled, so never zombies)


# ------------------------------------------------------------------------------------------------ files
def job_file(runs_dir: str | os.PathLike, name: str) -> Path:
    return Path(runs_dir).expanduser() / JOBS_DIR / f"{check_name(name)}.json"


def log_file(runs_dir: str | os.PathLike, name: str) -> Path:
    return job_file(runs_dir, name).with_suffix(".log")


def record(runs_dir: str | os.PathLike, name: str) -> dict | None:
    """The job record of `name`, or None when no job of that name was started here."""
    try:
        return read_json(job_file(runs_dir, name))
    except RunError:
        return None


def job_names(runs_dir: str | os.PathLike) -> list[str]:
    d = Path(runs_dir).expanduser() / JOBS_DIR
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def log_tail(runs_dir: str | os.PathLike, name: str, lines: int = 20) -> str:
    path = log_file(runs_dir, name)
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    # tqdm redraws a line with carriage returns: keep what a terminal would show last
    shown = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([line for line in shown if line.strip()][-lines:])


# ------------------------------------------------------------------------------------------------ processes
def _proc_start(pid: int) -> str | None:
    """When `pid` started (psutil: any OS), to tell a live job from a new process that reused its pid."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.Error, OSError):
        return None


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def reap() -> None:
    """Collect the exit status of finished children (a finished child is otherwise a zombie that looks alive)."""
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def alive(pid: Any, proc_start: str | None = None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    reap()
    if pid in _CHILDREN:
        return True
    if not pid_exists(pid):
        return False
    if _zombie(pid):
        return False
    if proc_start is None or "." not in str(proc_start):  # none recorded, or an older record's /proc clock ticks
        return True
    return _proc_start(pid) in (None, proc_start)


def _pid_of(runs_dir, name: str) -> tuple[int | None, str | None]:
    rec = record(runs_dir, name)
    if rec and rec.get("pid"):
        return rec["pid"], rec.get("proc_start")
    m = _manifest(runs_dir, name)  # a run started by hand: its pid counts while the run says it is running
    return (m.get("pid"), None) if m.get("state") == runs.RUNNING else (None, None)


def is_alive(runs_dir: str | os.PathLike, name: str) -> bool:
    pid, start = _pid_of(runs_dir, name)
    return alive(pid, start)


# ------------------------------------------------------------------------------------------------ control
def start(args: list[str], runs_dir: str | os.PathLike, name: str, env: dict[str, str] | None = None,
          nproc: int = 1) -> dict:
    """Start `hopscotch ARGS` as job `name` (pipeline commands write the run RUNS/NAME); returns its record.
    With `nproc` > 1 (pipeline commands only) the job runs them under torchrun on that many local processes.

    Refused when a job of that name is still running, or when a new pipeline run would overwrite an existing
    run of another command (resume with `--resume NAME` instead).
    """
    if not args:
        raise JobError("no command given")
    check_name(name)
    store = RunStore(runs_dir)
    store.ensure_writable()
    if is_alive(runs_dir, name):
        raise JobError(f"job {name!r} is still running; stop it first")
    args = [str(a) for a in args]
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise JobError(f"the process count must be a whole number >= 1, not {nproc!r}")
    if nproc > 1 and args[0] not in PIPELINE_COMMANDS:
        raise JobError(f"only {', '.join(PIPELINE_COMMANDS)} run on several processes, not {args[0]!r}")
    args = job_args(args, store.root, name)
    jf, lf = job_file(runs_dir, name), log_file(runs_dir, name)
    jf.parent.mkdir(exist_ok=True)
    progress = store.root / name / runs.PROGRESS_FILE
    if progress.is_file():
        progress.unlink()  # the previous attempt's progress
    rec = {"name": name, "command": args, "nproc": nproc, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "pid": None, "proc_start": None, "stop_requested": None, "returncode": None, "ended": None, "error": None}
    with FileLock(str(jf) + ".lock", timeout=30):
        write_json(jf, rec)
    with lf.open("a", encoding="utf-8") as log:
        log.write(f"\n$ {shown(args, nproc)}\n")
        log.flush()
        full_env = {**os.environ, "TQDM_MININTERVAL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
        if nproc > 1 and "OMP_NUM_THREADS" not in (env or {}):  # cores // N threads each, unless asked otherwise
            full_env["OMP_NUM_THREADS"] = str(threads_per_process(nproc))
        proc = subprocess.Popen([sys.executable, "-m", RUNNER, str(jf), "--", *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True, cwd=os.getcwd())
    _CHILDREN[proc.pid] = proc
    rec.update(pid=proc.pid, proc_start=_proc_start(proc.pid))
    update(jf, pid=rec["pid"], proc_start=rec["proc_start"])
    return rec


def update(jf: Path, **fields: Any) -> dict:
    """Set `fields` in the job record: read, change and replace under the record's file lock, so the app (start,
    stop) and the job process (its exit status) never overwrite each other's fields."""
    with FileLock(str(jf) + ".lock", timeout=30):
        rec = read_json(jf, {}) or {}
        rec.update(fields)
        write_json(jf, rec)
    return rec


def stop(runs_dir: str | os.PathLike, name: str, force: bool = False) -> bool:
    """Ask job `name` to stop: SIGTERM (the CLI finishes its step, saves, exits), or SIGKILL with `force`
    (a pipeline run survives that too: it resumes from the last saved step). False if it was not running."""
    pid, start_time = _pid_of(runs_dir, name)
    if not alive(pid, start_time):
        return False
    try:
        os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
    except ProcessLookupError:
        return False
    jf = job_file(runs_dir, name)
    if jf.is_file():
        update(jf, stop_requested=time.time())
    return True


def delete(runs_dir: str | os.PathLike, name: str) -> None:
    """Delete run `name` and its job files; refused while its job runs."""
    if is_alive(runs_dir, name):
        raise JobError(f"{name!r} is running; stop it before deleting it")
    store = RunStore(runs_dir)
    path = store.path(name)
    if (path / MANIFEST).is_file():
        store.delete(name)
    elif path.is_dir():
        shutil.rmtree(path)
    jf = job_file(runs_dir, name)
    for f in (jf, log_file(runs_dir, name), Path(str(jf) + ".lock")):
        if f.is_file():
            f.unlink()


# ------------------------------------------------------------------------------------------------ status
def _manifest(runs_dir, name: str) -> dict:
    try:
        return read_json(Path(runs_dir).expanduser() / name / MANIFEST, {}) or {}
    except RunError:
        return {"state": runs.CORRUPT}


def _last_error_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.startswith(("error: ", "hopscotch: error: ")):
            return line.split("error: ", 1)[1]
    return None


def status(runs_dir: str | os.PathLike, name: str) -> dict:
    """Where job/run `name` stands, from its files.

    state: starting (loading, no run directory yet) | running | stopping | the run's own state (done, stopped,
    failed, selected, ...) | interrupted (its process is gone mid-run: resumable) | exited (a job that is not a
    pipeline run finished) | failed. With progress: stage, step, total, info (the CLI's progress.json), and
    remaining_s: the seconds a running run has left (method/estimate.py; None until there is something to go on).
    """
    rec = record(runs_dir, name) or {}
    m = _manifest(runs_dir, name)
    pid, start_time = _pid_of(runs_dir, name)
    live = alive(pid, start_time)
    log = log_tail(runs_dir, name, 30) if rec else ""
    error = None
    if live:
        state = runs.STOPPING if rec.get("stop_requested") else (runs.RUNNING if m else runs.STARTING)
    elif m:
        state = m.get("state") or runs.CREATED
        if state in (runs.RUNNING, runs.CREATED):
            ended = (None, runs.EXIT_OK, runs.EXIT_STOPPED)
            state = runs.FAILED if rec.get("error") or rec.get("returncode") not in ended else runs.INTERRUPTED
        error = m.get("error")
    elif rec:
        rc = rec.get("returncode")
        state = runs.EXITED if rc == runs.EXIT_OK else (runs.STOPPED if rec.get("stop_requested") else runs.FAILED)
    else:
        state = runs.MISSING
    if state == runs.FAILED and not error:
        error = rec.get("error") or _last_error_line(log) or (
            f"the job ended with exit status {rec.get('returncode')}" if rec.get("returncode") is not None
            else "the job's process is gone")
    prog = read_progress(Path(runs_dir).expanduser() / name) if live else None
    out = {"name": name, "state": state, "alive": live, "pid": pid, "stage": m.get("stage"),
           "command": rec.get("command"), "returncode": rec.get("returncode"), "error": error, "log": log,
           "step": None, "total": None, "fraction": None, "info": {}, "updated": None, "remaining_s": None}
    if live and not m:
        out["stage"] = "loading the model"
    if isinstance(prog, dict):
        step, total = prog.get("step"), prog.get("total")
        out.update(step=step, total=total, info=prog.get("info") or {}, updated=prog.get("time"),
                   stage=prog.get("stage") or out["stage"])
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
            out["fraction"] = max(0.0, min(1.0, step / total))
    if live and m:
        command = next((a for a in rec.get("command") or [] if a in estimate.COMMAND_STAGES), "run")
        out["remaining_s"] = estimate.remaining(m, prog if isinstance(prog, dict) else None, command)
    return out
