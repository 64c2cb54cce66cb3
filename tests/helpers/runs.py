"""A finished tiny run (a saved random qwen2, its prompts, a given skip set, trained baselines and deltas), made in
a few seconds offline: what evaluation, benchmarks and the report tests read."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.models import make_model, make_tokenizer

from hopscotch_core.method import pipeline


def finished_run(root: Path, name: str = "r") -> Path:
    """Build `root/runs/NAME` (skip set [1, 3], baselines attn-bi and shortgpt, rank-2 deltas) on a 5-layer qwen2
    saved in `root/m`; returns `root`."""
    model = make_model("qwen2", num_hidden_layers=5)
    model.save_pretrained(root / "m")
    make_tokenizer().save_pretrained(root / "m")
    data = root / "prompts.jsonl"
    with data.open("w") as f:
        for i in range(18):
            f.write(json.dumps({"question": f"what is {i} plus {i + 3}?", "answer": f"so #### {2 * i + 3}"}) + "\n")
    s = pipeline.RunSettings(model=str(root / "m"), data=str(data), n_calib=10, n_eval=6, max_new_tokens=12,
                             gen_batch=4, blocks=[1, 3], epochs=1, baselines=["attn-bi", "shortgpt"], device="cpu",
                             lora_rank=2)  # low-rank deltas too: eval must reproduce the trained variants with them
    pipeline.run_pipeline(s, root / "runs", name)
    return root
