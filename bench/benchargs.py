"""Flags the benchmarks share: how much self-distillation data they make (`python bench/NAME.py` finds this file)."""

from __future__ import annotations

import argparse


def data_size_flags(ap: argparse.ArgumentParser, n_calib: int, n_eval: int, max_new_tokens: int) -> None:
    """--n-calib / --n-eval (prompts) and --max-new-tokens (the model's own answers), with a benchmark's defaults."""
    ap.add_argument("--n-calib", type=int, default=n_calib, help="calibration prompts")
    ap.add_argument("--n-eval", type=int, default=n_eval, help="held-out prompts")
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="length cap of the answers")
