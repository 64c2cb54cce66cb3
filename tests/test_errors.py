"""Every public exception class of hopscotch_core is defined in hopscotch_core/errors.py, and the module that raises
it still offers it under the same name (the same class object).

The classes are found in the source with ast, so a new one defined elsewhere fails here. Private control-flow
exceptions (a leading underscore, never seen by a user) may stay next to the code that raises and catches them.

Run alone: ``python -m pytest tests/test_errors.py``.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import hopscotch_core.errors as errors

ROOT = Path(__file__).resolve().parents[1] / "hopscotch_core"

# module -> the exception classes it raises and re-exports from errors.py (users and tests import them there)
REEXPORTED = {
    "engine.lowrank": ["LoraError"],
    "engine.folding": ["FoldError"],
    "method.runs": ["RunError"],
    "method.distributed": ["DistributedError", "SharedError"],
    "measure.metrics": ["MetricError"],
    "measure.evaluation": ["EvalError"],
    "measure.speed": ["SpeedError"],
    "measure.answers": ["AnswersError"],
    "measure.benchmarks": ["BenchmarkError", "BenchmarkUnavailableError"],
    "integrations.export": ["ExportError"],
    "integrations.gguf_export": ["GGUFExportError", "LlamaCppMissingError"],
    "integrations.deci_export": ["DeciExportError"],
    "integrations.lm_eval": ["LMEvalError", "LMEvalUnavailableError"],
    "studio.gguf_demo": ["GGUFDemoError"],
    "studio.jobs": ["JobError"],
}


def _exception_classes(path: Path) -> list[str]:
    """Names of the classes in a file whose bases name an exception (…Error, …Exception or a class of the file
    that is one)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
        if any(b.endswith(("Error", "Exception")) or b in found for b in bases):
            found.append(node.name)
    return found


def test_the_scan_finds_exception_classes(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("class A(ValueError): pass\nclass B(A): pass\nclass C: pass\nclass D(x.HopscotchError): pass\n"
                 "class _Stop(Exception): pass\n")
    assert _exception_classes(f) == ["A", "B", "D", "_Stop"]


def test_public_exception_classes_live_in_errors():
    elsewhere = sorted(f"{path.relative_to(ROOT.parent)}: {name}" for path in ROOT.rglob("*.py")
                       if path.name != "errors.py" for name in _exception_classes(path) if not name.startswith("_"))
    assert not elsewhere, "exception classes defined outside hopscotch_core/errors.py:\n" + "\n".join(elsewhere)


def test_errors_defines_every_reexported_class():
    in_errors = set(_exception_classes(ROOT / "errors.py"))
    assert {n for names in REEXPORTED.values() for n in names} <= in_errors


@pytest.mark.parametrize("module,name", [(m, n) for m, names in REEXPORTED.items() for n in names])
def test_old_import_path_gives_the_same_class(module, name):
    cls = getattr(importlib.import_module(f"hopscotch_core.{module}"), name)
    assert cls is getattr(errors, name)
    assert cls.__module__ == "hopscotch_core.errors"
    assert issubclass(cls, errors.HopscotchError)


def test_errors_imports_no_torch():
    code = ("import sys, hopscotch_core.errors; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
