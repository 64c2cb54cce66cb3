"""Start the app with `streamlit run` on a free port and drive Debian's chromium with Playwright: shared by the
browser test (tests/app/test_browser.py) and the speed budget (bench/bench_app.py).

Playwright comes from pip (dev extra); its own browser download is never used: chromium is /usr/bin/chromium
(`apt-get install chromium`), or $HOPSCOTCH_CHROMIUM.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import ROOT

CHROMIUM = os.environ.get("HOPSCOTCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`streamlit run app.py` in a subprocess with `env` added; `url` once /_stcore/health answers ok.

    `cwd`: the server's working folder (default the repository), where relative paths in `env` such as
    HOPSCOTCH_RUNS=runs resolve; the repository's .streamlit/ settings are copied there, so the app looks and
    behaves as when started from the checkout."""

    def __init__(self, env: dict[str, str], log: Path, timeout: float = 90.0, cwd: Path | None = None):
        cwd = Path(cwd) if cwd is not None else ROOT
        if cwd.resolve() != ROOT.resolve() and (ROOT / ".streamlit").is_dir():
            shutil.copytree(ROOT / ".streamlit", cwd / ".streamlit", dirs_exist_ok=True)
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.log = log
        self._log = log.open("w")
        full = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
             "--server.port", str(self.port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=cwd, env=full, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError("streamlit did not come up:\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def launch_browser(p):
    """A headless Debian chromium from a `sync_playwright()` context."""
    return p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def open_page(browser, errors: list[str], **kw):
    """A 1360x900 page of `browser` (`kw`: more new_page options) whose JavaScript errors go to `errors`."""
    page = browser.new_page(viewport={"width": 1360, "height": 900}, **kw)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def idle(page, timeout: float = 180_000, settle_ms: int = 400) -> None:
    """Wait until the app's script run has finished (the app root says notRunning) and the DOM settled."""
    page.wait_for_selector(IDLE, timeout=timeout)
    if settle_ms:
        page.wait_for_timeout(settle_ms)
        page.wait_for_selector(IDLE, timeout=timeout)
