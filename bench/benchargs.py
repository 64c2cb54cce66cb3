"""Flags the benchmarks share (`python bench/NAME.py` finds this file): how much self-distillation data they make,
and `--smoke`, every benchmark's smallest setting (seconds, not minutes), which tests/test_bench_smoke.py runs so
that no benchmark rots unnoticed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SMOKE_HELP = ("the smallest setting (CI: tests/test_bench_smoke.py): {what}; checks the script runs end to end, "
              "the figures mean nothing")


def data_size_flags(ap: argparse.ArgumentParser, n_calib: int, n_eval: int, max_new_tokens: int) -> None:
    """--n-calib / --n-eval (prompts) and --max-new-tokens (the model's own answers), with a benchmark's defaults."""
    ap.add_argument("--n-calib", type=int, default=n_calib, help="calibration prompts")
    ap.add_argument("--n-eval", type=int, default=n_eval, help="held-out prompts")
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="length cap of the answers")


def smoke_flag(ap: argparse.ArgumentParser, what: str) -> None:
    """--smoke: `what` says what the smallest setting runs."""
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP.format(what=what))


def smoke(args: argparse.Namespace, **settings) -> argparse.Namespace:
    """With --smoke, overwrite the parsed flags with the smallest setting's values; returns args."""
    if getattr(args, "smoke", False):
        for k, v in settings.items():
            setattr(args, k, v)
    return args


def smoke_model_dir() -> str:
    """A model directory for smoke runs: the embedded model's tokenizer, chat template and layer count (30, so the
    example runs' skip sets apply) with tiny random weights (hidden 64; ~3.4 M parameters, loads in well under a
    second). Built once into $HOPSCOTCH_CACHE/smoke-model (needs the default model cached or convertible)."""
    import shutil

    import torch
    import transformers

    from hopscotch_core.engine.loading import cache_dir, ensure_default_cached

    out = cache_dir() / "smoke-model"
    if (out / "model.safetensors").is_file():
        return str(out)
    src = Path(ensure_default_cached(progress=False))
    cfg = transformers.AutoConfig.from_pretrained(src)
    cfg.update({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens", "generation_config")):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return str(out)
