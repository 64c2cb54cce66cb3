"""studio/explain.py: an exception read as its cause and a fix."""

from __future__ import annotations

import torch

from hopscotch_core.errors import AdapterMismatchError, ModelNotAvailableError
from hopscotch_core.studio.explain import cause_and_fix, explain, is_oom


def test_explain_gives_cause_and_fix():
    from hopscotch_core.method.data import DataError

    text = explain(DataError("x.jsonl, line 3: not valid JSON"), "reading the prompts")
    assert text.startswith("**Cause:** the data cannot be used: x.jsonl, line 3") and "**Fix:**" in text
    assert "Traceback" not in text
    assert "offline" in cause_and_fix(ModelNotAvailableError("no"))[0]
    assert "another model" in cause_and_fix(AdapterMismatchError("made for m"))[1]
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory")) and is_oom(MemoryError())
    assert "smaller dtype" in cause_and_fix(RuntimeError("DefaultCPUAllocator: not enough memory: out of memory"))[1]
    assert cause_and_fix(KeyError("x"), "doing it")[0].startswith("KeyError while doing it")
