"""Throughput of the benchmark scorer (hopscotch eval --benchmarks): documents per second on each OLMES benchmark,
one pass per choice vs one shared pass over each context (its KV cache expanded to the choices), measured side by
side in one process, alternating, with the ratio; and the scores of the two routes compared (max |diff|).

    .venv/bin/python bench/bench_benchmarks.py                       # embedded model, 100 documents each, 2 threads
    .venv/bin/python bench/bench_benchmarks.py --docs 300 --skip 25,6,7,29
    .venv/bin/python bench/bench_benchmarks.py --smoke               # the smallest setting (CI): seconds

The default route (`share_context=None`) shares where that saves at least 40% of the tokens; this bench says
where sharing pays.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import hopscotch_core as hc
from benchargs import smoke, smoke_flag, smoke_model_dir
from hopscotch_core.measure import benchmarks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--benchmarks", default="olmes")
    ap.add_argument("--docs", type=int, default=100, help="documents per benchmark (the first ones)")
    ap.add_argument("--skip", default="", help="attention blocks to skip, e.g. 25,6,7,29")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per route (the faster one counts)")
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    smoke_flag(ap, "a tiny random model, 4 documents of arc_easy and winogrande, one round")
    args = smoke(ap.parse_args(), benchmarks="arc_easy,winogrande", docs=4, rounds=1, threads=1)
    if args.smoke:
        args.model = smoke_model_dir()
    torch.set_num_threads(args.threads)
    model, tok = hc.load_model(args.model, device="cpu")
    skip = [int(b) for b in args.skip.split(",") if b.strip()]
    names = benchmarks.check(args.benchmarks, 0, args.docs)
    print(f"model {args.model}, skip {skip or 'none'}, threads {torch.get_num_threads()}, {args.docs} documents "
          f"per benchmark, batch {args.batch_tokens} tokens, best of {args.rounds} alternating rounds")
    print("| benchmark | docs | tokens saved by sharing | one pass per choice (docs/s) | shared context (docs/s) | "
          "shared / per choice | default route | max abs diff of scores |")
    print("|---|---|---|---|---|---|---|---|")
    with hc.attach(model) as hs:
        hs.skip(skip)
        for name in names:
            docs = benchmarks.load(name, 0, args.docs).docs
            groups = benchmarks._groups(tok, docs, 1 << 20)
            plain_tok = sum(len(g.ctx) + len(c) for g in groups for _, c in g.conts)
            shared_tok = sum(len(g.ctx) + sum(len(c) for _, c in g.conts) for g in groups)
            best = {False: float("inf"), True: float("inf")}
            scores = {}
            for _ in range(args.rounds):
                for share in (False, True):
                    t0 = time.perf_counter()
                    scores[share] = benchmarks.score_docs(model, tok, docs, args.batch_tokens, share_context=share)
                    best[share] = min(best[share], time.perf_counter() - t0)
            flat = {k: np.array([x for r in v for x in r]) for k, v in scores.items()}
            saved = 1 - shared_tok / plain_tok
            route = "shared" if saved >= benchmarks.SHARE_SAVES else "per choice"
            print(f"| {name} | {len(docs)} | {saved:.0%} | {len(docs) / best[False]:.2f} | "
                  f"{len(docs) / best[True]:.2f} | {best[False] / best[True]:.2f}x | {route} | "
                  f"{np.abs(flat[True] - flat[False]).max():.2g} |")


if __name__ == "__main__":
    main()
