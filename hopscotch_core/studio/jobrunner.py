"""The body of a job process (studio/jobs.py starts it): `python -m hopscotch_core.studio.jobrunner JOBFILE -- ARGS`.

Runs the CLI's `main(ARGS)` in this process (so SIGTERM reaches the CLI's graceful-stop handler), or, for a job on
N > 1 local processes (the record's nproc), torchrun in this process over `-m hopscotch_core ARGS`; then writes the
exit status (and an unexpected error) into the job record JOBFILE.

Nothing imports this module: it sits above the CLI, which it calls, so the CLI and the job API (which the CLI's
report uses) stay free of an import cycle.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from .. import cli
from ..method.runs import EXIT_ERROR, EXIT_OK, EXIT_STOPPED, read_json
from .commands import torchrun_args
from .jobs import update


def run_torchrun(argv: list[str], nproc: int) -> int:
    """torchrun in this process (its agent starts the ranks and forwards SIGTERM to them); the ranks' exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(torchrun_args(argv, nproc))
    except ChildFailedError as e:  # a rank exited non-zero (EXIT_ERROR: an error it printed; EXIT_STOPPED: stopped)
        codes = [f.exitcode for f in e.failures.values() if isinstance(f.exitcode, int) and f.exitcode > 0]
        return min(codes) if codes else 1
    except SignalException:
        return EXIT_STOPPED
    return EXIT_OK


def run(job: str, argv: list[str]) -> int:
    """The CLI (or torchrun over it) in-process, then its exit status into the job record `job`."""
    rc, error = 1, None
    nproc = int((read_json(job, {}) or {}).get("nproc") or 1) if Path(job).is_file() else 1
    try:
        rc = run_torchrun(argv, nproc) if nproc > 1 else cli.main(argv)
    except SystemExit as e:  # argparse: usage error, message already on stderr
        rc = e.code if isinstance(e.code, int) else EXIT_ERROR
    except BaseException as e:  # noqa: BLE001 - recorded, printed to the log, then the process ends
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        path = Path(job)
        if path.parent.is_dir():
            update(path, returncode=rc, ended=time.strftime("%Y-%m-%dT%H:%M:%S"), error=error)
    return rc


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        print("usage: python -m hopscotch_core.studio.jobrunner JOBFILE -- HOPSCOTCH-ARGS...", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(run(sys.argv[1], sys.argv[3:]))
