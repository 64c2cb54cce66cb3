"""Progress of a long command: written by the CLI, read by the app's job view.

`ProgressBars` is the `on_progress` callback the CLI hands to long work (pipeline stages, evaluations, benchmarks):
a tqdm bar per stage on the terminal and, given a path, the run's `progress.json` (step, total, stage, info, time),
replaced atomically at most twice a second. `read_progress` is how studio/jobs.py reads that file back, so the
format has one owner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..method.runs import PROGRESS_FILE, read_json


def read_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """The last progress a command wrote into `run_dir` (see ProgressBars), or None."""
    return read_json(Path(run_dir).expanduser() / PROGRESS_FILE, None)


class ProgressBars:
    """tqdm bars for on_progress, one per stage; with `progress`, also that JSON file (step, total, stage, info,
    time), replaced atomically at most twice a second, for the app's live view (hopscotch_core.studio.jobs)."""

    def __init__(self, progress: Path | None = None) -> None:
        self.bar = None
        self.stage = None
        self.progress, self._pending, self._written = progress, None, 0.0

    def __call__(self, step: int, total: int, info: dict) -> None:
        from tqdm import tqdm

        stage = info.get("stage", "")
        if stage != self.stage or self.bar is None:
            self.close()
            self.bar = tqdm(total=total, desc=stage, unit="step", dynamic_ncols=True)
            self.stage = stage
        self.bar.total = total
        self.bar.n = step
        post = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in info.items() if k != "stage"}
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()
        if self.progress is not None:
            import time

            self._pending = {"step": step, "total": total, "stage": stage, "info": info, "time": time.time()}
            if time.monotonic() - self._written >= 0.5:
                self._write()

    def _write(self) -> None:
        import time

        from ..method.runs import write_json

        if self._pending is not None and self.progress.parent.is_dir():
            try:
                write_json(self.progress, self._pending)
            except (OSError, TypeError, ValueError):
                pass  # progress is a convenience; never fail a run over it
            self._pending, self._written = None, time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.progress is not None:
            self._write()
