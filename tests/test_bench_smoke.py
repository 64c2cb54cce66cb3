"""Benchmarks never rot: every script in bench/ runs its smallest setting (`--smoke`) end to end in a subprocess and
prints its result lines.

A new benchmark script needs a `--smoke` flag and an entry in RESULT below (the line its results end in); without
them test_every_script_is_covered fails. Most smoke runs use a tiny random model with the embedded model's
tokenizer (bench/benchargs.py smoke_model_dir), so the embedded model must be cached or convertible (slow
tests). bench_app's smoke run starts the app once in chromium and is skipped where chromium is absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.appdriver import CHROMIUM

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SHARED = {"benchargs.py"}  # argument code the scripts import, not a benchmark

# script -> a regex its output must match (its result lines), searched across lines
RESULT = {
    "answer_lengths.py": r'"n": 2, "cap": 96.*\n\| cap \| 96 \|',
    "bench_app.py": r"\| launch -> Model page drawn \(s\) \| \d+\.\d+ .*\n(.*\n)*\| Compare just opened: side by side, modified .*\d+\.\d+",
    "bench_benchmarks.py": r"\| arc_easy \| 4 \| \d+% \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+x \| shared \|(.*\n)*\| winogrande \| 4 \| 0% \|",
    "bench_distributed.py": r"2x1 +2 x 1 +\d+\.\d+ +\d+\.\d+(.*\n)*selected \[\d+\] in every variant; 30 scores agree "
                            r"within 1e-5: True(.*\n)*exchanges on 2 gloo ranks",
    "bench_export.py": r"\| tiny \| [\d.]+ M \| float32 \| \d+ \| hf \|(.*\n)*\| tiny \| [\d.]+ M \| float32 \| \d+ \| "
                       r"gguf:q8_0 \|",
    "bench_forward.py": r"compact, k=2 +\d+\.\d+(.*\n)*attached-at-all-ones prefill overhead: [-+]\d",
    "bench_llamacpp.py": r"\| original \| 0 \| 16 \| \d+\.\d+ .*\n\| attention-free \| 4 \| 16 \| \d+\.\d+",
    "bench_pair.py": r"\| plain \| \d+\.\d+ .*\n\| stream_pair threads \| \d+\.\d+ .*\n\| stream_pair batch \| \d+\.\d+",
    "bench_recovery.py": r"\| kl/channel/r0/n2 \| 1 \| \d\.\d+ (.*\n)*\| kl/channel/r2/n2/lr0\.001 \| 1 \| \d\.\d+"
                         r"(.*\n)*\| kl/channel/r2/n2/lr0\.001/lsq \| 1 \| \d\.\d+",
    "check_vllm.py": r"\| deci \| 3/3 \| .*\n\| hf \| 3/3 \| (.*\n)*KV-cache layers: deci \d+, hf \d+",
    "check_hf_export.py": r"\| kl \| \d\.\d+ \| \d\.\d+ \| [-+]\d\.\d+ \|\n\| agreement \| \d\.\d+ \| \d\.\d+ \|",
    "bench_selection.py": r"paper +\[\d+\] +\d+(.*\n)*fast \(loss shortlist 2\) +\[\d+\](.*\n)*agreement with paper mode",
    "bench_speed.py": r"original +0 +16 +1 +\d+\.\d+(.*\n)*compact +4 +16 +1 +\d+\.\d+",
    "bench_teacher.py": r"one KL epoch with the cache: +\d+\.\d+ s(.*\n)*KL on these rows: unscaled: exact \d",
    "fidelity_table.py": r"\| 4 \| Hopscotch, trained \|(.*\n)*\| 7 \| Hopscotch, trained \|",
}
TIMEOUT = {"bench_app.py": 600, "bench_distributed.py": 240}  # seconds; others 180


def scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py") if p.name not in SHARED)


def test_every_script_is_covered():
    """A script added to bench/ without a smoke entry (or an entry whose script is gone) fails here."""
    assert scripts() == sorted(RESULT)
    for name in scripts():
        assert "--smoke" in (BENCH / name).read_text(), f"{name} has no --smoke setting"


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("name", scripts())
def test_smoke(name, tmp_path):
    if name == "bench_app.py":
        if not Path(CHROMIUM).is_file() and os.environ.get("HOPSCOTCH_REQUIRE_BROWSER") != "1":
            pytest.skip(f"chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "HOPSCOTCH_RUNS": str(tmp_path / "runs"), "TMPDIR": str(tmp_path)}
    env.setdefault("OMP_NUM_THREADS", "1")
    res = subprocess.run([sys.executable, str(BENCH / name), "--smoke"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=TIMEOUT.get(name, 180), check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert re.search(RESULT.get(name, r"^$ never"), res.stdout), f"{name} printed no result lines:\n{res.stdout[-4000:]}"
    assert "failed" not in res.stdout, res.stdout[-4000:]
