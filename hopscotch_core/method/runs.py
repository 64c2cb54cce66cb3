"""Run directories: everything a pipeline run produces, written so that a kill -9 loses at most one step.

    runs/NAME/
      manifest.json        settings, model identity, versions, state, selected blocks (in order), results
      prompts.json         the seeded calibration / held-out split (prompt texts and reference answers)
      answers.jsonl        the model's own greedy answers, one line per prompt, appended per batch
      train-answers.jsonl  the same for the extra training prompts (the final training reads them too)
      scores.jsonl         every candidate score of every selection round, appended one by one
      teacher.safetensors  the original model's top-k log-probabilities (KL objectives), made once
      teacher-train.safetensors   the same on the extra training prompts' rows
      scales/epoch_NNN.safetensors   scalars (and Adam state) after each training epoch; scales-BASELINE/ likewise
      metrics.jsonl        one line per epoch / evaluation
      baselines.json       baseline block sets and their held-out losses
      adapter/             the final adapter (hc.load_adapter(model, "runs/NAME/adapter"))
      eval.json, eval.csv  `hopscotch eval`; bench.json, bench.csv  `hopscotch bench`
      benchmarks.json      `hopscotch eval --benchmarks`: task accuracy kept (benchmark-scores.jsonl: per document)
      answers-kept.json    `hopscotch eval --tasks answers`: share of the original's right answers kept (+ .jsonl)
      progress.json        the CLI's live progress (step, total, stage, info) while it runs, for the app
      log.txt

The file names, the run states and the CLI's exit codes are defined here, once; the pipeline, the CLI, the jobs
and the app use these names.

JSON files are replaced atomically (write, fsync, rename); JSONL files are appended with a flush + fsync per
record, and a torn last line (a kill in mid-write) is ignored when read back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from ..errors import RunError
from ..fileio import atomic_write

# ------------------------------------------------------------------------------------------------ file names
MANIFEST = "manifest.json"
PROMPTS_FILE = "prompts.json"
ANSWERS_FILE = "answers.jsonl"
TRAIN_ANSWERS_FILE = "train-answers.jsonl"  # answers to the extra training prompts (prompts.json "train_extra")
SCORES_FILE = "scores.jsonl"
TEACHER_FILE = "teacher.safetensors"
TRAIN_TEACHER_FILE = "teacher-train.safetensors"  # the teacher on the extra training prompts' rows
SCALES_DIR = "scales"                    # a baseline's: scales-NAME
METRICS_FILE = "metrics.jsonl"
BASELINES_FILE = "baselines.json"
ADAPTER_DIR = "adapter"
EVAL_FILE, EVAL_CSV = "eval.json", "eval.csv"
EVAL_ANSWERS_FILE = "eval-answers.jsonl"  # generated answers of `hopscotch eval`, kept for its resume
BENCH_FILE, BENCH_CSV = "bench.json", "bench.csv"
BENCHMARKS_FILE = "benchmarks.json"  # `hopscotch eval --benchmarks`: accuracy and accuracy kept per benchmark
BENCHMARK_SCORES_FILE = "benchmark-scores.jsonl"  # its per-document log-likelihoods, kept for resume
ANSWERS_KEPT_FILE = "answers-kept.json"  # `hopscotch eval --tasks answers`: the original's right answers kept
ANSWERS_KEPT_TEXTS = "answers-kept.jsonl"  # its generated answers, kept for resume
PROGRESS_FILE = "progress.json"
LOG_FILE = "log.txt"

# ------------------------------------------------------------------------------------------------ run states
# manifest["state"]: created, then running; a run ends as one of FINISHED (the last stage it was asked for is
# done), stopped (asked to stop, resumable) or failed
CREATED, RUNNING, STOPPED, FAILED = "created", "running", "stopped", "failed"
DONE, SELECTED, GENERATED, PROMPTED = "done", "selected", "generated", "prompts"
FINISHED = (DONE, SELECTED, GENERATED, PROMPTED)
# read back, not written: a running run whose process is gone (resumable), a manifest that cannot be read
INTERRUPTED, CORRUPT = "interrupted", "corrupt"
# a job's state (studio/jobs.status) adds: loading before the run exists, a stop asked, a job that is not a run
# and ended, and a name with neither job nor run
STARTING, STOPPING, EXITED, MISSING = "starting", "stopping", "exited", "missing"
ACTIVE = (STARTING, RUNNING, STOPPING)     # its process is alive
RESUMABLE = (STOPPED, INTERRUPTED, FAILED)

# ------------------------------------------------------------------------------------------------ exit codes
# of `hopscotch` (cli.main) and of a job process
EXIT_OK = 0
EXIT_ERROR = 2         # an error it printed (`error: ...`), or a usage error
EXIT_STOPPED = 3       # stopped before the end (Ctrl-C / SIGTERM): state saved, rerun to resume
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2))


def write_csv(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    """Rows as CSV (lists joined by spaces), replaced atomically."""
    columns = columns or (tuple(rows[0]) if rows else ())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    atomic_write(path, buf.getvalue())


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is corrupt ({e.msg}); delete the run or restore the file") from None


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    path = Path(path)
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n >= len(lines) - 2:  # a torn last record from an interrupted write: drop it
                break
            raise RunError(f"{path}, line {n + 1} is corrupt") from None
    return out


def epoch_file(folder: str | os.PathLike, epoch: int) -> Path:
    """The file of training epoch `epoch` in a scalars folder (scales/ or scales-NAME/)."""
    return Path(folder) / f"epoch_{epoch:03d}.safetensors"


def epoch_numbers(folder: str | os.PathLike) -> list[int]:
    """The epochs saved in a scalars folder, in order ([] when none or no folder)."""
    return sorted(int(p.stem.split("_")[1]) for p in Path(folder).glob("epoch_*.safetensors"))


def last_epoch(folder: str | os.PathLike) -> tuple[int, dict | None]:
    """(the last saved epoch, its tensors) of a scalars folder: "scales", with granularity channel also
    "channel_scales", the low-rank deltas (engine.artifacts.LORA_PREFIX) and the Adam state; (-1, None) before
    the first epoch. The one reader of the epoch files (the pipeline's resume, evaluation, bench)."""
    epochs = epoch_numbers(folder)
    if not epochs:
        return -1, None
    return epochs[-1], read_epoch(folder, epochs[-1])


def read_epoch(folder: str | os.PathLike, epoch: int) -> dict | None:
    """The tensors saved after `epoch` in a scalars folder (see last_epoch), or None where that epoch has none."""
    path = epoch_file(folder, epoch)
    if not path.is_file():
        return None
    from safetensors.torch import load_file  # torch only once there is a file to read

    return load_file(str(path))


def write_epoch(folder: str | os.PathLike, epoch: int, tensors: dict) -> Path:
    """Save epoch `epoch`'s tensors (scales, channel_scales, low-rank deltas, Adam state; the keys last_epoch
    gives back) into a scalars folder, atomically: a kill mid-write leaves no torn epoch file."""
    from safetensors.torch import save_file

    return atomic_write(epoch_file(folder, epoch), lambda tmp: save_file(tensors, tmp))


def pid_exists(pid: Any) -> bool:
    """Whether a process with this pid exists (psutil, any OS; a pid of another user counts as existing)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    return psutil.pid_exists(pid)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise RunError(f"run name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                       "(no path separators, at most 128 characters)")
    return name


class RunStore:
    """A folder of runs."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RunError(f"runs directory {self.root} is not writable ({e.strerror or e}); "
                           "pass another with --runs-dir") from None

    def path(self, name: str) -> Path:
        p = (self.root / check_name(name)).resolve()
        if p.parent != self.root.resolve():
            raise RunError(f"run name {name!r} escapes the runs directory")
        return p

    def open(self, name: str) -> Run:
        p = self.path(name)
        if not (p / MANIFEST).is_file():
            raise RunError(f"no run named {name!r} in {self.root}")
        return Run(p)

    def list(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            if (d / MANIFEST).is_file():
                try:
                    m = read_json(d / MANIFEST)
                except RunError:
                    m = {"name": d.name, "state": CORRUPT}
                if m.get("state") == RUNNING and not pid_exists(m.get("pid")):
                    m["state"] = INTERRUPTED  # its process is gone (killed, crashed machine): resumable
                out.append(m)
        return out

    def delete(self, name: str) -> None:
        shutil.rmtree(self.open(name).dir)


class Run:
    """One run directory (see module docstring)."""

    def __init__(self, path: Path):
        self.dir = Path(path)

    @property
    def name(self) -> str:
        return self.dir.name

    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def manifest(self) -> dict:
        return read_json(self.file(MANIFEST), {})

    def update(self, **fields: Any) -> dict:
        m = self.manifest
        m.update(fields)
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.file(MANIFEST), m)
        return m

    def log(self, message: str) -> None:
        with self.file(LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
