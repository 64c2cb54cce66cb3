"""Shared test helpers (import as `helpers.X`; tests/ is on pytest's pythonpath).

    models      tiny random models of every family from configs, a tiny tokenizer, small data helpers
    reference   an independent re-implementation of one Hopscotch layer (the expected values)
    apptest     Streamlit AppTest helpers (start a session, visit a page, read a figure, wait for a job)
    appdriver   `streamlit run` + Debian's chromium through Playwright
    studio_world a tiny model, a tiny finished run and examples for the app tests
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
