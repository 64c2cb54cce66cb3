"""Speed and fidelity of exported GGUF files in llama.cpp: original vs attention-free layers, f32 and quantized.

    .venv/bin/python bench/bench_llamacpp.py --run assets/example-run --ks 4,7 --contexts 128,512,2048 --rounds 5
    .venv/bin/python bench/bench_llamacpp.py --fidelity --quants f32,q8_0,q4_0      # held-out fidelity table
    .venv/bin/python bench/bench_llamacpp.py --smoke          # the smallest setting (CI): one small speed row

Speed: the default model exported by `hc.export(..., format="gguf")` with no block skipped and with the run's
first k selected blocks skipped; prompt processing (one eval of ctx tokens, fresh cache) and generation (16
single-token greedy steps after that ctx-token prompt) in tokens/s. Variants alternate round by round
in one process, one warm-up each; medians with min-max; speed-up = ratio of medians; bound = the FLOP-model bound
of hopscotch_core.measure.info (prefill at mean context ctx/2, decode at ctx). Use --threads at most the free cores.

Fidelity (--fidelity): on the run's held-out prompts and the original model's own greedy answers
(answers.jsonl), teacher-forced through llama.cpp: NLL of the answer tokens, KL(original || variant) and top-1
agreement against the original model in transformers (fp32), for the shipped Q4_1 GGUF (the original, "quantize
then Hopscotch" baseline) and for each exported variant (k, quant) with the run's trained scalars for those k
blocks when k equals the run's k, else the blocks unscaled. Speed uses the same choice (scalars do not change it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hopscotch_core as hc  # noqa: E402
from hopscotch_core.integrations.export import export, gguf_file  # noqa: E402
from hopscotch_core.measure.info import speedup_bound  # noqa: E402
from hopscotch_core.integrations.llamacpp import LlamaCpp  # noqa: E402
from hopscotch_core.method.runs import read_json, read_jsonl  # noqa: E402
from benchargs import smoke, smoke_flag, smoke_model_dir  # noqa: E402


def _ints(t: str) -> list[int]:
    return [int(x) for x in t.split(",") if x]


def _variants(model, run: Path, ks: list[int], quant: str, tmp: Path) -> dict[str, tuple[list[int], Path]]:
    """name -> (skipped blocks, gguf path) for k = 0 and each k (the run's first k selected blocks)."""
    manifest = json.loads((run / "manifest.json").read_text())
    order = manifest["selected"]
    scales = None
    if len(order) in ks:  # the run's trained scalars apply to its own k only
        trained = hc.load_adapter(model, run / "adapter")
        scales = trained.effective_scales()
        trained.detach()
    out = {}
    for k in [0] + ks:
        blocks = order[:k]
        with hc.attach(model) as hs:
            hs.skip(blocks)
            if k == len(order):
                hs.set_scales(scales)
            d = export(hs, tmp / f"k{k}-{quant}", format="gguf", quant=quant, verify=False)
        out[f"k{k}"] = (blocks, gguf_file(d))
    return out


def speed(args) -> None:
    model, tok = hc.load_model(args.model, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    variants = _variants(model, Path(args.run), args.ks, args.quant, tmp)
    lms = {name: LlamaCpp(path, n_ctx=max(args.contexts) + args.decode_tokens + 8, n_threads=args.threads)
           for name, (_, path) in variants.items()}
    g = torch.Generator().manual_seed(0)
    print("| variant | k | ctx | prompt tok/s (min-max) | speed-up | bound | gen tok/s (min-max) | speed-up | bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ctx in args.contexts:
        ids = torch.randint(3, 49152, (ctx,), generator=g).tolist()
        pp = {n: [] for n in lms}
        tg = {n: [] for n in lms}
        for n, lm in lms.items():  # warm-up
            lm.time_prompt(ids[:32])
        names = list(lms)
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each round
                pp[n].append(ctx / lms[n].time_prompt(ids))
                tg[n].append(args.decode_tokens / lms[n].time_decode(ids, args.decode_tokens))
        base_pp, base_tg = statistics.median(pp["k0"]), statistics.median(tg["k0"])
        for n, (blocks, _) in variants.items():
            mp, mt = statistics.median(pp[n]), statistics.median(tg[n])
            bp = speedup_bound(model, max(1, ctx // 2), blocks)
            bt = speedup_bound(model, ctx, blocks)
            print(f"| {'original' if not blocks else 'attention-free'} | {len(blocks)} | {ctx} | {mp:.1f} "
                  f"({min(pp[n]):.1f}-{max(pp[n]):.1f}) | {mp / base_pp:.3f} | {bp:.3f} | {mt:.1f} "
                  f"({min(tg[n]):.1f}-{max(tg[n]):.1f}) | {mt / base_tg:.3f} | {bt:.3f} |", flush=True)
    for lm in lms.values():
        lm.close()
    print(f"\n{args.quant}, {args.threads} thread(s), {args.rounds} rounds, generation = {args.decode_tokens} "
          "tokens after the ctx-token prompt; files in", tmp)
    if args.smoke:
        shutil.rmtree(tmp, ignore_errors=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def fidelity(args) -> None:
    model, tok = hc.load_model("default", device="cpu")
    run = Path(args.run)
    n_calib = len(read_json(run / "prompts.json")["calib"])  # answers are indexed calib first, then held-out
    seqs = [(r["prompt_ids"], r["response_ids"]) for r in sorted(read_jsonl(run / "answers.jsonl"),
                                                                  key=lambda r: r["index"])
            if r["index"] >= n_calib][: args.n_prompts]
    refs = []
    with torch.no_grad():
        for pi, ai in seqs:
            lg = model(torch.tensor([pi + ai])).logits[0, len(pi) - 1: -1].float().numpy()
            refs.append(_log_softmax(lg))
    tmp = Path(tempfile.mkdtemp(prefix="bench-llamacpp-fid-"))
    from hopscotch_core.engine.loading import default_gguf_path

    files = {("original (shipped Q4_1)", 0, "q4_1"): default_gguf_path()}
    for q in args.quants:
        for name, (blocks, path) in _variants(model, run, args.ks, q, tmp).items():
            files[(f"k{len(blocks)}", len(blocks), q)] = path
    print("| variant | k | weights | NLL | KL(orig‖variant) | top-1 agr. | file MiB |")
    print("|---|---|---|---|---|---|---|")
    for (name, k, q), path in files.items():
        nll, kl, agree, n = 0.0, 0.0, 0, 0
        with LlamaCpp(path, n_ctx=1024, n_threads=args.threads, logits_all=True) as lm:
            for (pi, ai), ref in zip(seqs, refs):
                lg = _log_softmax(lm.logits(pi + ai)[len(pi) - 1: -1])
                tgt = np.array(ai)
                nll -= lg[np.arange(len(ai)), tgt].sum()
                kl += (np.exp(ref) * (ref - lg)).sum()
                agree += int((ref.argmax(-1) == lg.argmax(-1)).sum())
                n += len(ai)
        print(f"| {name} | {k} | {q} | {nll / n:.3f} | {kl / n:.3f} | {agree / n:.3f} | "
              f"{path.stat().st_size / 2**20:.1f} |", flush=True)
    print(f"\n{len(seqs)} held-out prompts, {sum(len(a) for _, a in seqs)} answer tokens; reference: transformers fp32 "
          "original; no confidence intervals (point values over these tokens)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="assets/example-run")
    p.add_argument("--ks", type=_ints, default=[4, 7])
    p.add_argument("--contexts", type=_ints, default=[128, 512, 2048])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quant", default="f32", help="weight type of the speed run")
    p.add_argument("--fidelity", action="store_true", help="held-out fidelity table instead of speed")
    p.add_argument("--quants", type=lambda t: t.split(","), default=["f32", "q8_0", "q4_0"])
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--model", default="default", help="the model of the speed run")
    smoke_flag(p, "a tiny random model with the embedded model's tokenizer, k = 4 unscaled, context 16, "
                  "2 generated tokens, one round")
    args = p.parse_args()
    if args.smoke:
        smoke(args, model=smoke_model_dir(), ks=[4], contexts=[16], rounds=1, decode_tokens=2, quant="f32",
              fidelity=False)
    torch.set_num_threads(max(1, args.threads))
    t = time.time()
    fidelity(args) if args.fidelity else speed(args)
    print(f"({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
