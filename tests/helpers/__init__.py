"""Shared test helpers (import as `helpers.X`; tests/ is on pytest's pythonpath).

    models      tiny random models of every family from configs, a tiny tokenizer, small data helpers
    reference   an independent re-implementation of one Hopscotch layer (the expected values)
    apptest     Streamlit AppTest helpers (start a session, visit a page, read a figure, wait for a job)
    appdriver   `streamlit run` + Debian's chromium through Playwright
    studio_world a tiny model, a tiny finished run and examples for the app tests
"""

import importlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository


def importable(module: str) -> bool:
    """Whether `module` imports; where HOPSCOTCH_REQUIRE_LLAMACPP is set (CI), a failure is an error instead, so
    the llama.cpp tests can never be skipped there."""
    try:
        importlib.import_module(module)
    except ImportError:
        if os.environ.get("HOPSCOTCH_REQUIRE_LLAMACPP"):
            raise
        return False
    return True
