"""The command lines of jobs and runs, built in one place: what the app's launcher shows, what `jobs.start` runs
(and writes at the top of the job's log) and the report's "made by" line are the same text.

    args = cli_args(settings, "run")                       # ["run", "--model", ..., non-default flags]
    args = job_args(args, "runs", "my-run")                # + --runs-dir runs --name my-run (pipeline commands)
    shown(args)                                            # "hopscotch run --model ... --name my-run"
    shown(args, nproc=2)                                   # "OMP_NUM_THREADS=N torchrun ... -m hopscotch_core run ..."
    command_line(manifest, "runs")                         # the command that made (or resumes) a run
    export_args("gguf", "out/", run="my-run", runs_dir="runs", quant="q8_0")   # hopscotch export ... as a job
    benchmark_args("my-run", "runs", ["arc_easy", "piqa"], limit=200, shots=0)  # hopscotch eval --benchmarks ...

No torch import, no process started here: jobs.py starts them.
"""

from __future__ import annotations

import os
import shlex

from ..method import runs

PIPELINE_COMMANDS = ("run", "generate", "select", "train")  # the commands that write a run directory


def cli_args(settings: dict, command: str = "run") -> list[str]:
    """CLI arguments that reproduce `settings` (a RunSettings as a dict): the command, then non-default flags."""
    from ..method.settings import to_args

    return [command, *to_args(settings)]


def job_args(args: list[str], runs_dir: str | os.PathLike, name: str) -> list[str]:
    """`args` as a job named `name` runs them: a pipeline command gets --runs-dir RUNS (unless given) and --name NAME
    (unless it names or resumes a run itself), so its run directory is RUNS/NAME. Other commands are unchanged."""
    args = [str(a) for a in args]
    if args and args[0] in PIPELINE_COMMANDS:
        if "--runs-dir" not in args:
            args += ["--runs-dir", str(runs_dir)]
        if "--resume" not in args and "--name" not in args:
            args += ["--name", name]
    return args


def threads_per_process(nproc: int, cores: int | None = None) -> int:
    """Threads each of `nproc` local processes gets so that together they use the cores once (at least 1)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, nproc))


def torchrun_args(args: list[str], nproc: int) -> list[str]:
    """torchrun's arguments that run `hopscotch ARGS` on `nproc` local processes (a free port: --standalone)."""
    return ["--standalone", "--nproc-per-node", str(nproc), "-m", "hopscotch_core", *args]


def shown(args: list[str], nproc: int = 1) -> str:
    """The shell command that runs `hopscotch ARGS` (on `nproc` local processes under torchrun, with cores // N
    threads each, when nproc > 1), each argument quoted for the shell."""
    if nproc > 1:
        return f"OMP_NUM_THREADS={threads_per_process(nproc)} torchrun {_join(torchrun_args(args, nproc))}"
    return f"hopscotch {_join(args)}"


def command_of(manifest: dict) -> str:
    """The pipeline command a run was made with: train (given blocks), select, generate or run."""
    if (manifest.get("settings") or {}).get("blocks") is not None:
        return "train"
    return {runs.SELECTED: "select", runs.GENERATED: "generate", runs.PROMPTED: "generate"}.get(
        manifest.get("state"), "run")


def command_line(manifest: dict, runs_dir: str | None = None) -> str:
    """`hopscotch ...` that made (or resumes) this run."""
    from ..method.settings import LEGACY

    # a run older than a setting had its LEGACY value (not today's default)
    args = cli_args({**LEGACY, **(manifest.get("settings") or {})}, command_of(manifest))
    if runs_dir is not None:
        args += ["--runs-dir", str(runs_dir)]
    if manifest.get("name"):
        args += ["--name", manifest["name"]]
    return shown(args)


def export_args(fmt: str, out: str | os.PathLike, *, run: str | None = None, runs_dir: str | os.PathLike | None = None,
                model: str | None = None, dtype: str | None = None, adapter: str | os.PathLike | None = None,
                skip: list[int] | tuple[int, ...] = (), quant: str | None = None, force: bool = False) -> list[str]:
    """`export` arguments for a job: a run's trained model (`run` in `runs_dir`), or `model` with an `adapter`
    and/or a `skip` set; `quant` for gguf only; `force` replaces a non-empty `out`."""
    args = ["export"]
    if run is not None:
        args += ["--run", run] + (["--runs-dir", str(runs_dir)] if runs_dir is not None else [])
    if model is not None:
        args += ["--model", str(model)]
    if dtype:
        args += ["--dtype", str(dtype)]
    if adapter is not None:
        args += ["--adapter", str(adapter)]
    if skip:
        args += ["--skip", ",".join(str(int(b)) for b in sorted(set(skip)))]
    args += ["--format", fmt]
    if fmt == "gguf" and quant:
        args += ["--quant", quant]
    args += ["--out", str(out)] + (["--force"] if force else [])
    return args


def benchmark_args(run: str, runs_dir: str | os.PathLike, names: list[str] | tuple[str, ...], limit: int | None = None,
                   shots: int = 0, progress_file: bool = False) -> list[str]:
    """`eval` arguments that score run `run` of `runs_dir` on multiple-choice benchmarks (`names`, the first `limit`
    documents of each, `shots`-shot) into RUN/benchmarks.json; `progress_file`: the CLI keeps RUN/progress.json
    current (the app's live view of the job)."""
    args = ["eval", "--run", run, "--runs-dir", str(runs_dir), "--benchmarks", ",".join(names)]
    if limit is not None:
        args += ["--limit", str(int(limit))]
    args += ["--shots", str(int(shots))]
    return args + (["--progress-file"] if progress_file else [])


def _join(args: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)
