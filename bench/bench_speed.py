"""Speed and memory of the embedded model with k = 0, 4, 7 attention blocks skipped: original vs run-time skip vs
compact, prefill latency and decode tokens/s at several context lengths, KV-cache and parameter bytes, beside the
FLOP-model bound. All variants are measured alternately in one process (hopscotch_core.measure.speed).

    .venv/bin/python bench/bench_speed.py                                   # CPU, contexts 128 512 2048, batch 1
    .venv/bin/python bench/bench_speed.py --device cuda --dtype bfloat16 --batch-sizes 1 8
    .venv/bin/python bench/bench_speed.py --run runs/NAME --out bench-out/  # that run's selection order
    .venv/bin/python bench/bench_speed.py --smoke                           # the smallest setting (CI): seconds

The skip sets are the first 4 and 7 blocks of a run's selection order: by default the example run the app ships
(assets/example-run), else blocks spread evenly over the depth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import hopscotch_core as hc
from hopscotch_core.measure import speed
from benchargs import smoke, smoke_flag, smoke_model_dir

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--run", default=str(ROOT / "assets" / "example-run"), help="run dir giving the selection order")
    ap.add_argument("--k", type=int, nargs="+", default=[4, 7])
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write bench.json / bench.csv here")
    smoke_flag(ap, "a tiny random model, k = 4, context 16, 2 decoded tokens, one round")
    args = smoke(ap.parse_args(), k=[4], contexts=[16], batch_sizes=[1], decode_tokens=2, rounds=1, threads=1)
    if args.smoke:
        args.model = smoke_model_dir()
    torch.set_num_threads(args.threads)

    model, _ = hc.load_model(args.model, device=args.device, dtype=args.dtype)
    n = hc.get_family(model).num_layers
    manifest = Path(args.run) / "manifest.json"
    if manifest.is_file():
        order = json.loads(manifest.read_text())["selected"]
        source = f"selection order of {args.run}"
    else:
        order = [round(i * (n - 1) / max(max(args.k) - 1, 1)) for i in range(max(args.k))]
        source = "spread over the depth (no run found)"
    if max(args.k) > len(order):
        raise SystemExit(f"the run selected only {len(order)} blocks; --k up to that")
    sets = [(order[:k], None) for k in args.k]
    print(f"model {args.model}  device {model.device}  dtype {model.dtype}  threads {torch.get_num_threads()}  "
          f"layers {n}; skip sets ({source}): " + ", ".join(f"k={k} {sorted(order[:k])}" for k in args.k))
    rows = speed.measure(model, contexts=args.contexts, batch_sizes=args.batch_sizes,
                         decode_tokens=args.decode_tokens, rounds=args.rounds, skip_sets=sets,
                         on_progress=lambda s, t, i: print(f"\r{s}/{t}", end="", flush=True))
    print(f"\nprefill: one forward of B x ctx tokens; decode: {args.decode_tokens} greedy tokens after it; "
          f"median over {args.rounds} alternating rounds (min-max); x = ratio of medians to the original")
    print(speed.format_table(rows))
    if args.out:
        speed.save(args.out, rows, model)


if __name__ == "__main__":
    main()
