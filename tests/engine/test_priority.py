"""engine.priority: background work waits while interactive work runs on the same model, and goes on after."""

from __future__ import annotations

import threading
import time

from hopscotch_core.engine import priority


def test_wait_turn_blocks_while_interactive_work_runs():
    g = priority.PriorityGate()
    assert g.wait_turn() and not g.busy and g.waits == 0
    done = threading.Event()
    with g.interactive():
        assert g.busy
        th = threading.Thread(target=lambda: (g.wait_turn(), done.set()))
        th.start()
        assert not done.wait(0.3)  # still waiting: the interactive block runs
        with g.interactive():  # re-entrant / a second user
            pass
        assert g.busy and not done.is_set()
    th.join(2)
    assert done.is_set() and not g.busy and g.waits == 1


def test_wait_turn_timeout_and_stop():
    g = priority.PriorityGate()
    with g.interactive():
        t = time.perf_counter()
        assert g.wait_turn(timeout=0.2) is False
        assert 0.15 < time.perf_counter() - t < 1.0
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        assert g.wait_turn(should_stop=stop.is_set) is False


def test_one_gate_per_model_object():
    class M:
        pass

    a, b = M(), M()
    assert priority.gate(a) is priority.gate(a)
    assert priority.gate(a) is not priority.gate(b)
