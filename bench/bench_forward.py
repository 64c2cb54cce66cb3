"""Forward and decode time: stock model vs Hopscotch attached at all ones vs compact models with k skipped blocks.

    .venv/bin/python bench/bench_forward.py                 # embedded SmolLM2-135M, fp32, CPU
    .venv/bin/python bench/bench_forward.py --model DIR --device cuda --dtype bfloat16 --k 4 8
    .venv/bin/python bench/bench_forward.py --smoke         # the smallest setting (CI): seconds

All variants are timed alternately in the same process (round-robin, order rotated each round), so machine noise
hits them alike; the table gives median and min over rounds, and the ratio of medians to the stock model beside
the FLOP-model bound (hopscotch_core.measure.info: linear layers + attention scores, prefill at mean context T/2).
Goal from the core-engine issue: attached-at-all-ones overhead <= 2 %.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hopscotch_core as hc
from benchargs import smoke, smoke_flag, smoke_model_dir
from hopscotch_core.measure.info import flops_per_token


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--k", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    smoke_flag(ap, "a tiny random model, 1 x 16 tokens, k = 2, 2 decoded tokens, one round")
    args = smoke(ap.parse_args(), batch=1, seq=16, rounds=1, k=[2], decode_tokens=2, threads=1)
    if args.smoke:
        args.model = smoke_model_dir()
    torch.set_num_threads(args.threads)

    model, tok = hc.load_model(args.model, device=args.device, dtype=args.dtype)
    dev = model.device
    n = hc.get_family(model).num_layers
    # which blocks does not matter for speed; spread them over the depth
    skip_sets = {k: sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) for k in args.k}
    hs = hc.attach(model)
    compacts = {}
    for k, blocks in skip_sets.items():
        hs.set_skipped(blocks)
        compacts[k] = hs.compact()
    hs.detach()

    torch.manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (args.batch, args.seq), device=dev)
    prompt = ids[:1, :64]

    def stock(fn):
        return fn(model)

    def attached(fn):
        with hc.attach(model):
            return fn(model)

    variants = {"stock": stock, "attached, all ones": attached}
    for k, small in compacts.items():
        variants[f"compact, k={k}"] = lambda fn, small=small: fn(small)

    def prefill(m):
        sync(dev)
        t = time.perf_counter()
        m(ids, use_cache=False)
        sync(dev)
        return time.perf_counter() - t

    def decode(m):
        kw = dict(max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens, do_sample=False,
                  pad_token_id=tok.pad_token_id if tok is not None else 0)
        sync(dev)
        t = time.perf_counter()
        m.generate(prompt, **kw)
        sync(dev)
        return args.decode_tokens / (time.perf_counter() - t)

    names = list(variants)
    times: dict[str, list[float]] = {v: [] for v in names}
    tps: dict[str, list[float]] = {v: [] for v in names}
    with torch.no_grad():
        for v in names:  # warm-up
            variants[v](prefill)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for v in order:
                times[v].append(variants[v](prefill))
                tps[v].append(variants[v](decode))

    ctx = args.seq // 2
    base_flops = flops_per_token(model, ctx)
    print(f"model {args.model}  device {dev}  dtype {model.dtype}  threads {args.threads}  layers {n}")
    print(f"prefill batch {args.batch} x {args.seq} tokens; decode {args.decode_tokens} tokens after a 64-token "
          f"prompt, batch 1; {args.rounds} alternating rounds")
    print(f"{'variant':<22}{'prefill med s':>14}{'min s':>9}{'speed-up':>10}{'FLOP bound':>12}"
          f"{'decode tok/s':>14}{'speed-up':>10}{'params M':>10}")
    base_t, base_d = statistics.median(times["stock"]), statistics.median(tps["stock"])
    for v in names:
        k = int(v.split("k=")[1]) if "k=" in v else 0
        m = compacts.get(k, model)
        bound = base_flops / flops_per_token(model, ctx, skip_sets.get(k, ()))
        med, dmed = statistics.median(times[v]), statistics.median(tps[v])
        print(f"{v:<22}{med:>14.4f}{min(times[v]):>9.4f}{base_t / med:>10.3f}{bound:>12.3f}"
              f"{dmed:>14.1f}{dmed / base_d:>10.3f}{sum(p.numel() for p in m.parameters()) / 1e6:>10.2f}")
    over = statistics.median(times["attached, all ones"]) / base_t - 1
    print(f"attached-at-all-ones prefill overhead: {100 * over:+.2f} % (goal <= 2 %)")
    print("skip sets:", {k: v for k, v in skip_sets.items()})


if __name__ == "__main__":
    main()
