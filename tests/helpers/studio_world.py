"""A tiny world for the app's tests: a tiny model directory, a prompt file, and finished runs made by the project's
own pipeline (one as the bundled example, one of another model). Built once per test session (~2 s)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .models import make_model, make_tokenizer


@dataclass
class World:
    model_dir: Path
    other_model_dir: Path
    data: Path
    examples: Path        # HOPSCOTCH_EXAMPLES: holds example-run/
    example: Path         # the example run directory
    other_run: Path       # a run of another model (5 layers)


_CACHE: dict[str, World] = {}

# what every test job uses: tiny data, short answers
SMALL = {"n_calib": 8, "n_eval": 4, "max_new_tokens": 10, "gen_batch": 4, "epochs": 2, "device": "cpu"}


def write_prompts(path: Path, n: int = 24) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"what is {i} plus {i + 3}?", "answer": f"#### {2 * i + 3}"}) + "\n")
    return path


def save_model(path: Path, family: str = "llama", **kw) -> Path:
    make_model(family, **kw).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def build(base: Path) -> World:
    key = str(base)
    if key in _CACHE:
        return _CACHE[key]
    import hopscotch_core as hc
    from hopscotch_core.method import pipeline
    from hopscotch_core.method.settings import PAPER

    model_dir = save_model(base / "tiny-llama")
    other_dir = save_model(base / "tiny-qwen2", "qwen2", num_hidden_layers=5)
    data = write_prompts(base / "prompts.jsonl")
    model, tok = hc.load_model(model_dir, device="cpu")
    # the paper's objective and granularity, like the bundled example runs (made before kl/channel were defaults)
    s = pipeline.RunSettings(model=str(model_dir), data=str(data), k=2, mode="fast", shortlist=3,
                             baselines=["attn-bi", "random"], **PAPER, **SMALL)
    pipeline.run_pipeline(s, base / "examples", "example-run", model=model, tok=tok)
    other, otok = hc.load_model(other_dir, device="cpu")
    s2 = pipeline.RunSettings(model=str(other_dir), data=str(data), k=1, mode="fast", shortlist=2, **PAPER, **SMALL)
    pipeline.run_pipeline(s2, base / "other-runs", "qwen2-k1", model=other, tok=otok)
    world = World(model_dir, other_dir, data, base / "examples", base / "examples" / "example-run",
                  base / "other-runs" / "qwen2-k1")
    _CACHE[key] = world
    return world
