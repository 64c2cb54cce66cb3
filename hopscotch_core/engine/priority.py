"""The user's request first: a gate per shared model that lets interactive work (a generation, a timing the user
asked for) go before background analysis (the drift / MMD view), on the same model and the same CPU.

    gate = priority.gate(model)               # one per model object, made on first use
    with gate.interactive():                  # a generation: held for its whole length
        ...
    gate.wait_turn()                          # background work, before each forward pass (and between chunks
                                              # of its CPU work): returns once no interactive work is running

Background work waits *outside* the model's lock (compare._borrowed takes the gate's turn before the lock, and
lets the lock go again if an interactive request came in meanwhile), so a waiting background pass never holds up
the generation it waits for; a pass already running finishes first (a pass of the drift view: ~0.7 s on the
default model). No threads of its own, no torch: a threading.Condition and a counter.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator


class PriorityGate:
    """Counts the interactive requests running on one model; background work waits until there are none."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self.waits = 0  # how many times background work found interactive work running and waited (tests, bench)

    @property
    def busy(self) -> bool:
        """Whether interactive work is running now."""
        return self._active > 0

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        """Mark interactive work for the length of the block (re-entrant, any number of threads at once)."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def wait_turn(self, timeout: float | None = None, should_stop: Callable[[], bool] | None = None) -> bool:
        """Block while interactive work runs; True when it is background's turn, False on `timeout` or when
        `should_stop()` turned true while waiting (checked every 0.1 s)."""
        with self._cond:
            if self._active == 0:
                return True
            self.waits += 1
            remaining = timeout
            while self._active > 0:
                if should_stop is not None and should_stop():
                    return False
                step = 0.1 if remaining is None else min(0.1, remaining)
                if step <= 0:
                    return False
                self._cond.wait(step)
                if remaining is not None:
                    remaining -= step
            return True


_GATES: "weakref.WeakKeyDictionary[object, PriorityGate]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def gate(model) -> PriorityGate:
    """The gate of this model object (one per object for the life of the model)."""
    with _LOCK:
        got = _GATES.get(model)
        if got is None:
            got = _GATES[model] = PriorityGate()
        return got
