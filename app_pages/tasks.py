"""Background computations of the pages: a worker pool shared by every session of this server, a registry of
tasks by key (one result per key for everyone), and the progress line that polls a task until its result is in.

The pool and the registry are held by st.cache_resource, so they survive Streamlit re-importing this module (a
module global would be replaced, and the tasks in the old one orphaned). A task makes no st.* call.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import streamlit as st

from app_pages.ui import show_error

SLOT = "_task_"        # session-state prefix: the task this session last started in a slot
MAX_TASKS = 64         # results kept in the registry (oldest dropped first)


@dataclass
class Pool:
    """The server's page workers and its tasks by key."""

    executor: ThreadPoolExecutor
    tasks: OrderedDict = field(default_factory=OrderedDict)  # key -> Task, oldest first
    lock: threading.Lock = field(default_factory=threading.Lock)


@st.cache_resource(show_spinner=False)
def pool() -> Pool:
    """The one pool of this server process (two workers: figures and measurements of the pages)."""
    return Pool(ThreadPoolExecutor(max_workers=2, thread_name_prefix="hopscotch-page"))


class Task:
    """One computation in a worker thread (no st.* call in it); `progress` is what its on_progress last said."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, progress: bool, stoppable: bool = False,
                 executor: ThreadPoolExecutor | None = None):
        self.started = time.time()
        self.progress: tuple[int, int, dict] | None = None
        self.stop = threading.Event()
        if progress:
            kwargs = {**kwargs, "on_progress": self._on_progress}
        if stoppable:
            kwargs = {**kwargs, "should_stop": self.stop.is_set}
        self.future: Future = (executor or pool().executor).submit(fn, *args, **kwargs)

    def stale(self) -> bool:
        """Cancelled before it began, or told to stop (its result is not the answer): ask again."""
        return self.future.cancelled() or self.stop.is_set()

    @classmethod
    def thread(cls, fn: Callable[[], object], name: str, start: bool = True) -> "Task":
        """fn() in a daemon thread of its own (not the page pool: a model load must not wait behind figures). With
        start=False the thread begins at the first start() (app.py: after the page is drawn, so that the model's
        imports and load do not compete with drawing the first page)."""
        t = cls.__new__(cls)
        t.started, t.progress, t.future, t.stop = time.time(), None, Future(), threading.Event()

        def work() -> None:
            try:
                t.future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to whoever reads the result
                t.future.set_exception(e)

        t._thread = threading.Thread(target=work, name=name, daemon=True)
        t._start_lock = threading.Lock()
        if start:
            t.start()
        return t

    def start(self) -> None:
        """Begin a Task.thread(..., start=False) (once; later calls and pool tasks: nothing)."""
        th = getattr(self, "_thread", None)
        if th is None:
            return
        with self._start_lock:
            if not th.is_alive() and th.ident is None:
                self.started = time.time()
                th.start()

    def _on_progress(self, step: int, total: int, info: dict | None = None) -> None:
        self.progress = (step, total, info or {})

    def done(self) -> bool:
        return self.future.done() and not self.future.cancelled()


def pending() -> list[Task]:
    """The tasks of the registry that have not finished (tests wait for them)."""
    p = pool()
    with p.lock:
        return [t for t in p.tasks.values() if not t.future.done()]


def task(key: tuple, fn: Callable, *args, slot: str | None = None, progress: bool = False, stoppable: bool = False,
         wait: float = 0.15, **kwargs) -> Task:
    """fn(*args, **kwargs) in a worker thread, once per `key` in this server process (the result is shared by
    every session asking with the same key; keep the model, skip set and inputs in it). With `slot`, a task this
    session started earlier in the same slot that has not begun yet is cancelled (a user clicking through skip
    sets waits for the last one only; with `stoppable`, fn gets should_stop() and one already running is told to
    stop). With `progress`, fn also gets on_progress(step, total, info). Waits up to
    `wait` seconds, so that a quick result (a cache hit) is drawn in this run without a progress line."""
    p = pool()
    with p.lock:
        got = p.tasks.get(key)
        if got is None or got.stale():
            got = p.tasks[key] = Task(fn, args, kwargs, progress, stoppable, p.executor)
            while len(p.tasks) > MAX_TASKS:
                p.tasks.popitem(last=False)
        p.tasks.move_to_end(key)
    if slot is not None:
        old = st.session_state.get(SLOT + slot)
        if old is not None and old is not got and not old.future.cancel() and not old.future.done():
            old.stop.set()  # already running: a stoppable fn ends at its next check (the others just finish)
        st.session_state[SLOT + slot] = got
    if wait > 0:
        with contextlib.suppress(FutureTimeout, CancelledError):
            got.future.result(timeout=wait)
    return got


def when_ready(t: Task, draw: Callable[[object], None], label: str, doing: str, every: float = 1.0,
               meanwhile: Callable[[], None] | None = None) -> None:
    """draw(result) when `t` has finished (its error, with cause and fix, if it failed); until then a progress
    line that polls as a fragment, and one full rerun when the result is in: the page stays interactive while the
    figure fills in. Each poll redraws in the browser, which shares the CPU with the computation: polling every
    0.4 s made a 2.5 s measurement take 11.7 s on 2 cores, every 1 s 2.1-2.8 s.

    `meanwhile()`, if given, draws something in the result's place until it is in (the previous figure, say): drawn
    at the same place with the same keys, the browser then updates that figure instead of building a new one
    (building the 13-panel drift figure anew took chromium ~1.3 s)."""
    box = st.container()  # the progress line's place, before the result's: the result keeps its place either way
    if t.done() and not t.stale():
        err = t.future.exception()
        if err is not None:
            show_error(err, doing)
        else:
            draw(t.future.result())
        return

    def poll() -> None:
        if t.done() or t.stale():  # a stale task (stopped for another session) is asked for afresh
            st.rerun()
        step, total, _ = t.progress or (0, 0, {})
        took = f"{time.time() - t.started:.0f} s"
        if total:
            st.progress(min(1.0, step / total), text=f"{label} {step}/{total} · {took}")
        else:
            st.progress(0.0, text=f"{label} · {took}")

    with box:
        st.fragment(run_every=every)(poll)()
    if meanwhile is not None:
        meanwhile()
