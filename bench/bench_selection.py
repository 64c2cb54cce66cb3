"""Paper mode vs fast mode on the same data: selection wall time and the held-out loss of what each selects.

    .venv/bin/python bench/bench_selection.py                      # embedded SmolLM2-135M, k = 2, CPU
    .venv/bin/python bench/bench_selection.py --k 4 --n-calib 32 --model DIR --device cuda
    .venv/bin/python bench/bench_selection.py --smoke              # the smallest setting (CI): seconds

One set of self-distillation data (the model's own greedy answers to seeded GSM8K prompts) feeds both modes;
the script prints, side by side: selection wall time and its ratio, the blocks picked (in order), and for each
set the held-out loss of the original model, of the set unscaled (all ones) and with Hopscotch-trained scalars.
"""

from __future__ import annotations

import argparse
import time

import torch

import hopscotch_core as hc
from benchargs import data_size_flags, smoke, smoke_flag, smoke_model_dir
from hopscotch_core.method import data, selection, training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="gsm8k")
    ap.add_argument("--k", type=int, default=2)
    data_size_flags(ap, n_calib=16, n_eval=16, max_new_tokens=64)
    ap.add_argument("--shortlist", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    smoke_flag(ap, "a tiny random model, k = 1, 2 + 1 prompts, answers <= 8 tokens, one epoch")
    args = smoke(ap.parse_args(), k=1, n_calib=2, n_eval=1, max_new_tokens=8, shortlist=2, epochs=1, threads=1)
    if args.smoke:
        args.model = smoke_model_dir()
    torch.set_num_threads(args.threads)

    model, tok = hc.load_model(args.model, device=args.device)
    recs = data.load_prompts(args.data)
    calib, held = data.split_indices(len(recs), args.n_calib, args.n_eval, args.seed)
    t = time.perf_counter()
    answers = data.generate_answers(model, tok, [recs[i]["prompt"] for i in calib + held], args.max_new_tokens)
    gen_s = time.perf_counter() - t
    rows = data.pack(data.build_examples(answers[:len(calib)]))
    eval_rows = data.pack(data.build_examples(answers[len(calib):]))
    print(f"data: {len(calib)} calibration / {len(held)} held-out GSM8K prompts, answers <= {args.max_new_tokens} "
          f"tokens ({gen_s:.0f} s); {sum(r.n_tokens for r in rows)} calibration response tokens in {len(rows)} rows")

    hs = hc.attach(model)
    out = {}
    for mode, by in (("paper", "bi"), ("fast", "bi"), ("fast", "loss")):
        cfg = selection.SelectConfig(args.k, mode, args.shortlist, by, seed=args.seed)
        t = time.perf_counter()
        sel = selection.greedy_select(hs, rows, cfg)
        sel_s = time.perf_counter() - t
        hs.reset()
        hs.skip(sel.selected)
        unscaled = data.dataset_loss(model, eval_rows)
        t = time.perf_counter()
        training.train_scales(hs, rows, (), training.TrainConfig(epochs=args.epochs, seed=args.seed))
        train_s = time.perf_counter() - t
        trained = data.dataset_loss(model, eval_rows)
        out[f"{mode}" + (f" ({by} shortlist {args.shortlist})" if mode == "fast" else "")] = (
            sel.selected, sel_s, unscaled, trained, train_s)
    hs.reset()
    original = data.dataset_loss(model, eval_rows)
    paper_s = out["paper"][1]
    print(f"held-out loss of the original model: {original:.4f}")
    print(f"{'mode':<28}{'selected':<14}{'select s':>9}{'time ratio':>11}{'unscaled':>10}{'trained':>10}"
          f"{'train s':>9}")
    for name, (blocks, sel_s, unscaled, trained, train_s) in out.items():
        print(f"{name:<28}{blocks!s:<14}{sel_s:>9.0f}{sel_s / paper_s:>11.3f}{unscaled:>10.4f}{trained:>10.4f}"
              f"{train_s:>9.0f}")
    print("agreement with paper mode: " + ", ".join(
        f"{name}: {len(set(v[0]) & set(out['paper'][0]))}/{args.k}" for name, v in out.items() if name != "paper"))


if __name__ == "__main__":
    main()
