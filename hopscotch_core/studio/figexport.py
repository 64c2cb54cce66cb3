"""Take-away copies of a plotly figure: a static image (PNG / SVG, through kaleido) and its plotted numbers (CSV).

    png = figure_image(fig, "png")       # bytes; the first call starts a headless Chromium (~2 s), later ones ~0.2 s
    svg = figure_image(fig, "svg")
    csv = figure_csv(fig)                # one row per plotted point, read from the figure itself
    image_export_problem()               # None, or why PNG/SVG cannot be made here and how to fix it

Static images need kaleido (v1, `pip install kaleido`; in the app and dev extras) and a Chrome/Chromium. kaleido's
own Chrome download (`plotly_get_chrome`) is never used: the browser is $BROWSER_PATH, $HOPSCOTCH_CHROMIUM, Debian's
/usr/bin/chromium (`apt-get install chromium`), or the first chromium/chrome on PATH. One browser is kept alive in a
background thread for every caller of this process (thread-safe; restarted after a crash; closed after
`IDLE_SECONDS` without use and at exit), so only the first image pays its start.

The CSV needs nothing but the figure: every trace's points with the trace's name, x, y, z for heatmaps (one row
per cell, empty cells left out), customdata (the value behind a log colour scale, the blocks behind a marker) and
per-point text, and the panel (subplot title) when the figure has several. Shapes and annotations are not data and
are left out.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import FigureExportError

FORMATS = ("png", "svg")
MIME = {"png": "image/png", "svg": "image/svg+xml", "csv": "text/csv"}
PNG_SCALE = 2           # PNG pixels per CSS pixel (a 700-px-wide figure becomes 1400 px)
IDLE_SECONDS = 300      # close the browser after this long without an image
START_TIMEOUT = 60.0
RENDER_TIMEOUT = 60.0
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FIX = ("install kaleido (`pip install kaleido`, part of the app and dev extras) and a Chrome/Chromium "
       "(`apt-get install chromium`, or set BROWSER_PATH to one)")


# ------------------------------------------------------------------------------------------------ images
def browser_path() -> str | None:
    """The Chrome/Chromium kaleido will drive, or None when none is found (see the module docstring)."""
    for var in ("BROWSER_PATH", "HOPSCOTCH_CHROMIUM"):
        if os.environ.get(var):
            return os.environ[var]
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in _BROWSER_NAMES:
        if found := shutil.which(name):
            return found
    return None


def image_export_problem() -> str | None:
    """Why PNG/SVG cannot be made in this environment, with the fix; None when they can. Cheap (no browser start)."""
    if importlib.util.find_spec("kaleido") is None:
        return f"kaleido is not installed: {FIX}."
    path = browser_path()
    if path is None:
        return f"no Chrome/Chromium found for kaleido: {FIX}."
    if not os.access(path, os.X_OK):
        var = next((v for v in ("BROWSER_PATH", "HOPSCOTCH_CHROMIUM") if os.environ.get(v) == path), None)
        where = f" ({var})" if var else ""
        return f"the browser {path}{where} does not exist or is not executable: {FIX}."
    return None


def _reason(e: BaseException) -> str:
    """The first line of an error's first argument (choreographer's errors carry a tuple of advice lines, some of
    which suggest downloading a Chrome: not our fix)."""
    first = str(e.args[0]) if e.args else ""
    return f"{type(e).__name__}: {first.splitlines()[0]}" if first else type(e).__name__


class _Renderer:
    """One kaleido browser on an asyncio loop in a daemon thread, shared by every thread of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kaleido: Any = None
        self._busy = 0
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self._atexit = False

    def render(self, spec: dict, opts: dict) -> bytes:
        last_error: BaseException | None = None
        for _attempt in range(2):  # a browser that crashed or hung is restarted once
            with self._lock:
                self._start_locked()
                k, loop = self._kaleido, self._loop
                self._busy += 1
            fut = asyncio.run_coroutine_threadsafe(k.calc_fig(spec, opts=opts), loop)
            try:
                return fut.result(RENDER_TIMEOUT)
            except (FutureTimeout, Exception) as e:  # noqa: BLE001 - any browser failure: restart, retry once
                fut.cancel()
                last_error = e
                with self._lock:
                    self._close_locked()
            finally:
                with self._lock:
                    self._busy -= 1
                    self._last = time.monotonic()
                    self._schedule_idle_close()
        reason = "timed out" if isinstance(last_error, FutureTimeout) else _reason(last_error)
        raise FigureExportError(f"the browser that renders static images failed ({reason}); "
                                f"browser {browser_path()}. Fix: {FIX}; CSV export does not need it.")

    def _start_locked(self) -> None:
        if self._kaleido is not None:
            return
        problem = image_export_problem()
        if problem:
            raise FigureExportError(problem[0].upper() + problem[1:])
        path = browser_path()
        for name in ("choreographer", "kaleido", "browser_proc"):  # their warnings are ours to report, once
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.ERROR)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True, name="hopscotch-kaleido")
        thread.start()

        async def open_browser():
            import kaleido

            k = kaleido.Kaleido(path=path, mathjax=False, timeout=RENDER_TIMEOUT)  # no CDN: works offline
            await k.open()
            return k

        try:
            self._kaleido = asyncio.run_coroutine_threadsafe(open_browser(), loop).result(START_TIMEOUT)
        except BaseException as e:  # noqa: BLE001 - reported with the fix
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            reason = "timed out" if isinstance(e, FutureTimeout) else _reason(e)
            raise FigureExportError(f"could not start the browser {path} for static images ({reason}). "
                                    f"Fix: {FIX}.") from None
        self._loop, self._thread = loop, thread
        if not self._atexit:
            atexit.register(self.close)
            self._atexit = True

    def _schedule_idle_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(IDLE_SECONDS + 1, self._idle_close)
        self._timer.daemon = True
        self._timer.start()

    def _idle_close(self) -> None:
        with self._lock:
            if self._busy == 0 and time.monotonic() - self._last >= IDLE_SECONDS:
                self._close_locked()

    def _close_locked(self) -> None:
        k, loop, thread = self._kaleido, self._loop, self._thread
        self._kaleido = self._loop = self._thread = None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(k.close(), loop).result(15)
        except BaseException:  # noqa: BLE001 - closing a broken browser: kill what is left below
            proc = getattr(k, "subprocess", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    @property
    def running(self) -> bool:
        return self._kaleido is not None

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._close_locked()


_RENDERER = _Renderer()


def figure_image(fig: go.Figure | dict, fmt: str = "png", *, width: int | None = None, height: int | None = None,
                 scale: float | None = None) -> bytes:
    """The figure as PNG or SVG bytes, drawn by plotly.js in a headless Chromium (kaleido). Size: the figure's
    own width/height (kaleido's default width 700 px when unset); PNG at `PNG_SCALE`x unless `scale` is given.
    Raises FigureExportError (with the fix) when kaleido or a browser is missing or the browser fails."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r}: use one of {', '.join(FORMATS)}")
    spec = (fig if isinstance(fig, go.Figure) else go.Figure(fig)).to_plotly_json()
    opts: dict[str, Any] = {"format": fmt, "scale": scale if scale is not None else (PNG_SCALE if fmt == "png" else 1)}
    if width:
        opts["width"] = width
    if height:
        opts["height"] = height
    return _RENDERER.render(spec, opts)


def close() -> None:
    """Close the shared browser now (it restarts on the next image)."""
    _RENDERER.close()


# ------------------------------------------------------------------------------------------------ CSV
def _flat(values: Any) -> list | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        return None  # a single string (a whole-trace text), not per point
    arr = np.asarray(values, dtype=object)
    if arr.ndim == 0:
        return None
    return list(arr.reshape(-1)) if arr.ndim == 1 else [list(r) for r in arr]


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " | ".join(str(_cell(x)) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _unnamed(t: Any, i: int) -> str:
    bar = getattr(t, "colorbar", None)
    if bar is not None and bar.title and bar.title.text:
        return str(bar.title.text)  # a heatmap: what its colour means
    return f"{t.type} {i}"


def _panels(fig: go.Figure) -> dict[str, str]:
    """y-axis id ("y", "y2", ...) -> panel name (its title, or the subplot title above it), when the figure has
    more than one y axis."""
    layout = fig.layout
    axes = sorted({t.yaxis or "y" for t in fig.data}, key=lambda a: int(a[1:] or 1))
    if len(axes) < 2:
        return {}
    out = {}
    for ax in axes:
        yax = layout[f"yaxis{ax[1:]}"]
        name = yax.title.text if yax.title and yax.title.text else None
        if not name:
            xid = next((t.xaxis or "x" for t in fig.data if (t.yaxis or "y") == ax), "x")
            x0, x1 = layout[f"xaxis{xid[1:]}"].domain or (0, 1)
            top = (yax.domain or (0, 1))[1]
            for a in layout.annotations or ():
                if a.xref == "paper" and a.x is not None and x0 <= a.x <= x1 and a.y is not None and a.y >= top - 1e-6:
                    name = a.text
                    break
        out[ax] = name or ax
    return out


def figure_table(fig: go.Figure | dict) -> pd.DataFrame:
    """One row per plotted point of every trace: trace, [panel], x, y, [y_low, y_high] (the ends of error bars),
    [z], [customdata], [text]. Optional columns
    appear only when some trace has them. Heatmap cells are rows (x and y are the cell's column and row labels);
    cells without a value (not plotted) are left out."""
    fig = fig if isinstance(fig, go.Figure) else go.Figure(fig)
    panels = _panels(fig)
    rows: list[dict] = []
    for i, t in enumerate(fig.data):
        name = t.name or _unnamed(t, i)
        base = {"trace": name}
        if panels:
            base["panel"] = panels.get(t.yaxis or "y", "")
        custom = _flat(getattr(t, "customdata", None))
        text = _flat(getattr(t, "text", None))
        if t.type == "heatmap":
            z = np.asarray(t.z, dtype=float) if t.z is not None else np.empty((0, 0))
            if z.ndim != 2:
                continue
            xs = list(t.x) if t.x is not None else list(range(z.shape[1]))
            ys = list(t.y) if t.y is not None else list(range(z.shape[0]))
            cd = np.asarray(t.customdata, dtype=object) if t.customdata is not None else None
            for r in range(z.shape[0]):
                for c in range(z.shape[1]):
                    if math.isnan(z[r, c]):
                        continue
                    row = {**base, "x": _cell(xs[c]), "y": _cell(ys[r]), "z": float(z[r, c])}
                    if cd is not None and cd.ndim >= 2:
                        row["customdata"] = _cell(cd[r, c])
                    rows.append(row)
            continue
        xs, ys = _flat(getattr(t, "x", None)), _flat(getattr(t, "y", None))
        if xs is None and ys is None:
            continue
        n = len(ys if ys is not None else xs)
        xs = xs if xs is not None else list(range(n))
        ys = ys if ys is not None else [None] * n
        err = getattr(t, "error_y", None)
        plus = _flat(err.array) if err is not None and err.array is not None else None
        minus = _flat(err.arrayminus) if err is not None and err.arrayminus is not None else plus
        for j in range(n):
            row = {**base, "x": _cell(xs[j]) if j < len(xs) else None, "y": _cell(ys[j])}
            if plus is not None and j < len(plus) and isinstance(ys[j], (int, float)):
                up, down = plus[j], minus[j] if minus is not None and j < len(minus) else None
                row["y_low"] = None if down is None else float(ys[j]) - float(down)
                row["y_high"] = None if up is None else float(ys[j]) + float(up)
            if custom is not None and j < len(custom):
                row["customdata"] = _cell(custom[j])
            if text is not None and j < len(text):
                row["text"] = _cell(text[j])
            rows.append(row)
    cols = ["trace", *(["panel"] if panels else []), "x", "y"]
    cols += [c for c in ("y_low", "y_high", "z", "customdata", "text") if any(c in r for r in rows)]
    return pd.DataFrame(rows, columns=cols, dtype=object)  # object: ints stay ints, floats keep every digit


def figure_csv(fig: go.Figure | dict) -> str:
    """`figure_table(fig)` as CSV text (full float precision: the numbers are the plotted ones)."""
    return figure_table(fig).to_csv(index=False, lineterminator="\n")


def file_stem(text: str) -> str:
    """A file-name-safe stem: letters, digits, '-', '_' and '.' kept, everything else '-'."""
    out = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text)).strip("-.")
    while "--" in out:
        out = out.replace("--", "-")
    return out or "figure"


def titles(figs: Iterable[go.Figure]) -> list[str]:
    """The title text of each figure ("" when it has none)."""
    return [(f.layout.title.text or "") if f.layout.title else "" for f in figs]
