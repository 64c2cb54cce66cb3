"""Speed and memory of a skip set, measured side by side: the original model, the same model with the blocks
skipped at run time (Hopscotch attached), the compact copy without the skipped weights, and (variant "deci") the
model a `deci` export holds: everything folded, run by the modeling code that export carries, as
`from_pretrained(DIR, trust_remote_code=True)` builds it (Llama-layer families; integrations/deci_export.py).

    from hopscotch_core.measure import speed
    rows = speed.measure(model, skipped=[7, 6, 25, 9], contexts=(128, 512, 2048), batch_sizes=(1, 4))
    speed.table(rows)                       # pandas DataFrame, one row per variant x context x batch

What is timed, per (context C, batch B) and round, for each variant in turn (the order rotates every round, so
machine noise falls on all variants alike; one untimed warm-up first):
- prefill: one forward of B x C random tokens with the KV cache on (`logits_to_keep=1`, as in generation);
- decode: then `decode_tokens` greedy steps of one token per sequence on that cache; tokens/s = B x steps / time.
On CUDA every timer is bracketed by `torch.cuda.synchronize()`. Reported: median, min and max over rounds, the
speed-up of medians against the original, and beside it the FLOP-model bound (hopscotch_core.measure.info: linear layers
plus attention scores; prefill at mean context C/2, decode at context C). Memory: KV-cache bytes after the prefill
(a skipped block's cache layer stores nothing) and parameter bytes of the variant's model (the run-time skip keeps
every weight in memory; the compact copy does not).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.families import get_family
from ..engine.cache import cache_bytes, cache_kwarg
from ..engine.priority import gate
from ..errors import SpeedError, check_blocks
from .info import speedup_bound
from ..method.runs import BENCH_CSV, BENCH_FILE, write_csv, write_json
from ..engine.scaling import attach, compact_info, handle_of

VARIANTS = ("original", "skipped", "compact", "deci")
DEFAULT_VARIANTS = VARIANTS[:3]
Progress = Callable[[int, int, dict], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _check(model: nn.Module, skipped: Sequence[int], contexts: Sequence[int], batch_sizes: Sequence[int],
           decode_tokens: int, rounds: int, variants: Sequence[str]) -> None:
    if compact_info(model) is not None:
        raise SpeedError("measure() compares an original model with its skipped and compact versions; "
                         "this model is already compact: load the original model")
    if handle_of(model) is not None:
        raise SpeedError("the model has a Hopscotch handle attached; detach it (or measure before attaching)")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise SpeedError(f"unknown variant(s) {bad}; use any of {', '.join(VARIANTS)}")
    if not contexts or any(int(c) < 1 for c in contexts):
        raise SpeedError(f"contexts must be positive token counts; got {list(contexts)}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise SpeedError(f"batch sizes must be at least 1; got {list(batch_sizes)}")
    if decode_tokens < 1 or rounds < 1:
        raise SpeedError("decode_tokens and rounds must be at least 1")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max(contexts) + decode_tokens > limit:
        raise SpeedError(f"context {max(contexts)} + {decode_tokens} decode tokens exceeds the model's "
                         f"{limit} positions")
    check_blocks(list(skipped), get_family(model).num_layers, allow_empty=True)  # the package's one block rule
    if any(v in variants for v in ("skipped", "compact", "deci")) and not skipped:
        raise SpeedError("give the blocks to skip (or measure only the 'original' variant)")


def _measure(model: nn.Module, skipped: Iterable[int] = (), scales: torch.Tensor | None = None,
            contexts: Sequence[int] = (128,), batch_sizes: Sequence[int] = (1,), decode_tokens: int = 16,
            rounds: int = 3, variants: Sequence[str] = DEFAULT_VARIANTS, lock: Any = None, seed: int = 0,
            on_progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
            skip_sets: Sequence[tuple[Sequence[int], torch.Tensor | None]] | None = None) -> list[dict]:
    """Rows (one per variant x skip set x context x batch) in the bench.json format; see the module docstring.

    `model` is an original model without a handle; it is left as it was. `lock` (e.g. the app's per-model
    lock) is held while the shared model runs with a skip set. `scales` only changes numbers, not speed, but
    the compact copy is built from them so it is the model that would be exported. `skip_sets` (a list of
    (blocks, scales)) measures several skip sets against one original in the same alternation instead.
    """
    sets = [(sorted({int(b) for b in blocks}), sc) for blocks, sc in (skip_sets or [(skipped, scales)])]
    kinds = [v for v in VARIANTS[1:] if v in variants]
    guard = lock if lock is not None else nullcontext()
    with guard:  # another holder of the lock may have a handle attached for the moment
        for blocks, _ in sets:
            _check(model, blocks, contexts, batch_sizes, decode_tokens, rounds, variants)
    dev = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]

    # every timed variant: (kind, blocks, scales, compact model or None)
    todo: list[tuple[str, list[int], Any, nn.Module | None]] = [("original", [], None, None)]
    for blocks, sc in sets:
        for kind in kinds:
            small = None
            if kind in ("compact", "deci"):
                with guard, attach(model) as hs:
                    hs.configure(blocks, sc)
                    small = hs.compact() if kind == "compact" else deci_model(hs)
            todo.append((kind, blocks, sc, small))

    @contextmanager
    def as_variant(kind: str, blocks: list[int], sc: Any, small: nn.Module | None):
        if small is not None:
            yield small
            return
        with guard:
            if kind == "original":
                yield model
                return
            with attach(model) as hs:
                hs.configure(blocks, sc)
                yield model

    cache_kw = cache_kwarg(model.forward)

    def one(m: nn.Module, ids: torch.Tensor) -> tuple[float, float, int]:
        _sync(dev)
        t0 = time.perf_counter()
        out = m(input_ids=ids, use_cache=True, logits_to_keep=1)
        _sync(dev)
        t1 = time.perf_counter()
        cache = getattr(out, "cache", None) or out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        kv = sum(cache_bytes(cache))
        pos = ids.shape[1]
        for _ in range(decode_tokens):
            out = m(input_ids=nxt, use_cache=True, cache_position=torch.tensor([pos], device=dev),
                    **{cache_kw: cache})
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            pos += 1
        _sync(dev)
        t2 = time.perf_counter()
        return t1 - t0, ids.shape[0] * decode_tokens / (t2 - t1), kv

    configs = [(int(c), int(b)) for c in contexts for b in batch_sizes]
    n = len(todo)
    total, step = len(configs) * (rounds + 1) * n, 0
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ctx, batch in configs:
            ids = torch.randint(0, vocab, (batch, ctx), generator=gen).to(dev)  # (B, C)
            pre: list[list[float]] = [[] for _ in todo]
            dec: list[list[float]] = [[] for _ in todo]
            kv = [0] * n
            for r in range(rounds + 1):  # round 0 is the warm-up
                for j in [(r + i) % n for i in range(n)]:  # the order rotates every round
                    if should_stop is not None and should_stop():
                        return rows
                    with as_variant(*todo[j]) as m:
                        p, d, kv[j] = one(m, ids)
                    if r > 0:
                        pre[j].append(p)
                        dec[j].append(d)
                    step += 1
                    if on_progress is not None:
                        on_progress(step, total, {"stage": "speed", "variant": todo[j][0], "k": len(todo[j][1]),
                                                  "context": ctx, "batch": batch})
            base_p, base_d = statistics.median(pre[0]), statistics.median(dec[0])
            for j, (kind, blocks, _, small) in enumerate(todo):
                rows.append({
                    "variant": kind, "k": len(blocks), "blocks": blocks, "context": ctx, "batch": batch,
                    "prefill_s_median": statistics.median(pre[j]), "prefill_s_min": min(pre[j]),
                    "prefill_s_max": max(pre[j]),
                    "decode_tok_s_median": statistics.median(dec[j]), "decode_tok_s_min": min(dec[j]),
                    "decode_tok_s_max": max(dec[j]),
                    "speedup_prefill": base_p / statistics.median(pre[j]),
                    "speedup_decode": statistics.median(dec[j]) / base_d,
                    "flop_bound": speedup_bound(model, max(ctx // 2, 1), blocks),
                    "flop_bound_decode": speedup_bound(model, ctx, blocks),
                    "kv_cache_bytes": kv[j], "param_bytes": param_bytes(small if small is not None else model),
                    "rounds": rounds, "decode_tokens": decode_tokens,
                })
    return rows



def deci_model(hs) -> nn.Module:
    """The model a deci export of handle `hs` holds, in memory: its folded weights (sharing every tensor the fold
    does not change) in the export's own modeling code. DeciExportError where the layout cannot hold it."""
    from ..engine.folding import fold_model
    from ..integrations.deci_export import build_model, config_dict, deci_state, plan

    layout = plan(hs)
    folded = fold_model(hs, share=True)
    return build_model(config_dict(hs, layout, next(folded.parameters()).dtype), deci_state(folded, layout))


def deci_possible(model: nn.Module, blocks: Sequence[int]) -> bool:
    """Whether the deci layout holds `model` with attention `blocks` skipped (the bench adds the variant then)."""
    from ..integrations.deci_export import DeciExportError, plan

    with attach(model) as hs:
        hs.skip(list(blocks))
        try:
            plan(hs)
        except DeciExportError:
            return False
    return True


@functools.wraps(_measure)
def measure(model: nn.Module, *args, **kwargs) -> list[dict]:
    # timings the user asked for are interactive work: background analysis of this model waits (engine.priority)
    with gate(model).interactive():
        return _measure(model, *args, **kwargs)


def save(out: str | os.PathLike, rows: list[dict], model: nn.Module) -> Path:
    """Write bench.json (rows + device, dtype, threads) and bench.csv into directory `out`; returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / BENCH_FILE, {"format_version": 1, "device": str(next(model.parameters()).device),
                                    "dtype": str(model.dtype), "threads": torch.get_num_threads(), "rows": rows})
    write_csv(out / BENCH_CSV, rows)
    return out


def table(rows: list[dict]):
    """The rows as a pandas DataFrame (blocks joined by spaces)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if "blocks" in df:
        df["blocks"] = df["blocks"].map(lambda b: " ".join(map(str, b)))
    return df


def format_table(rows: list[dict]) -> str:
    """A plain-text table for terminals and notes."""
    head = (f"{'variant':<9}{'k':>3}{'ctx':>6}{'B':>3}{'prefill med s':>14}{'(min-max)':>18}{'x':>7}"
            f"{'bound':>7}{'decode tok/s':>13}{'x':>7}{'bound':>7}{'KV MiB':>9}{'params MiB':>12}")
    lines = [head]
    for r in rows:
        spread = f"({r['prefill_s_min']:.4f}-{r['prefill_s_max']:.4f})"
        lines.append(
            f"{r['variant']:<9}{r['k']:>3}{r['context']:>6}{r['batch']:>3}{r['prefill_s_median']:>14.4f}"
            f"{spread:>18}{r['speedup_prefill']:>7.3f}"
            f"{r['flop_bound']:>7.3f}{r['decode_tok_s_median']:>13.1f}{r['speedup_decode']:>7.3f}"
            f"{r['flop_bound_decode']:>7.3f}{r['kv_cache_bytes'] / 2**20:>9.2f}{r['param_bytes'] / 2**20:>12.1f}")
    return "\n".join(lines)
