"""Recovery on the embedded model: which training (objective x granularity x low-rank deltas x calibration size)
restores the original?

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bench_recovery.py --work ~/.cache/hopscotch/bench-recovery
    ... --lora-ranks 0,4,16 --calib-sizes 32,128,256 --delta-inits zero,lsq --ks 4,7   (the grid)
    ... --report                                     (print every cell measured so far, from --work/results.json)
    ... --smoke                                      (the smallest setting, CI: seconds, in a fresh work folder)

For k = 4 and k = 7 (the skip sets of the bundled example runs, assets/example-run-k4 and assets/example-run, so
nothing is selected here) it trains the scalars with every objective (ce = the paper's, kl, ce+kl) and
granularity (scalar = the paper's, channel) on ONE shared set of self-distillation data: the original model's
greedy answers to calibration and held-out GSM8K prompts, generated once and cached in --work (answers.jsonl;
a rerun, or a killed run, reuses what is there). The teacher's top-k log-probs on the calibration rows are
computed once as well (teacher.safetensors) and shared by every kl / ce+kl training.

On the held-out answers it prints, per variant (unscaled + each trained one), the token-mean NLL, KL(original ||
variant) and top-1 agreement with the original (teacher-forced), each with a 95% bootstrap interval over prompts
(measure/stats.py: per-prompt token means weighted by response tokens), the paired difference of KL and agreement
against the paper's setting (ce, scalar) with its interval (* where it excludes 0), and the wall time of each
training. Results also go to --work/results.json. CPU only, one process; threads = --threads.

Low-rank healing, training data and the deltas' start: every cell of --lora-ranks x --calib-sizes (x --lora-lrs
x --delta-inits for ranks > 0) trains on the first N calibration answers (N plays the part of a run's --n-train:
the selection's data is not involved here), its deltas starting at B = 0 (zero) or from the least-squares fit of
each skipped block's output (lsq, method/deltainit.py; the held-out KL right after the fit is recorded as the
curve's first point, and the fit's seconds count as train seconds); after every epoch it measures the held-out figures (so one run gives
the epoch curve), and it records train seconds and the peak resident memory during the cell (psutil, sampled every
50 ms). Each cell is written to results.json as it finishes; a rerun skips the cells already there (--redo
repeats them), so the grid can be filled over several invocations. Paired differences are taken against the
rank-0 cell of the same calibration size, objective and granularity, and for an lsq cell against the same cell
with the zero start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hopscotch_core as hc  # noqa: E402
from benchargs import data_size_flags, smoke, smoke_flag, smoke_model_dir  # noqa: E402
from hopscotch_core.fileio import atomic_write  # noqa: E402
from hopscotch_core.measure.stats import excludes_zero, mean_ci, paired_diff_ci, weighted_mean  # noqa: E402
from hopscotch_core.method import data, deltainit, training  # noqa: E402

SKIP_SETS = {4: ROOT / "assets/example-run-k4/manifest.json", 7: ROOT / "assets/example-run/manifest.json"}


def skip_set(k: int) -> list[int]:
    selected = json.loads(SKIP_SETS[k].read_text())["selected"]
    if len(selected) != k:
        raise SystemExit(f"{SKIP_SETS[k]} selects {len(selected)} blocks, not {k}")
    return list(selected)


def answers(model, tok, args, work: Path) -> tuple[list[data.Answer], list[data.Answer]]:
    """Greedy answers to n_calib + n_eval GSM8K prompts, cached in work/answers-<key>.jsonl (append per batch)."""
    records = data.load_prompts("gsm8k")
    calib, held = data.split_indices(len(records), args.n_calib, args.n_eval, args.seed)
    prompts = [records[i]["prompt"] for i in calib + held]
    key = hashlib.sha256(json.dumps([prompts, args.max_new_tokens]).encode()).hexdigest()[:12]
    path = work / f"answers-{key}.jsonl"
    have = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                a = data.Answer.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line of a killed run
            have[a.index] = a
    if len(have) < len(prompts):
        t = time.perf_counter()

        def save(batch):
            old = path.read_text() if path.is_file() else ""
            if old and not old.endswith("\n"):
                old = old[: old.rfind("\n") + 1]
            text = old + "".join(json.dumps(a.to_json()) + "\n" for a in batch)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))

        new = data.generate_answers(model, tok, prompts, args.max_new_tokens, args.gen_batch, skip=have,
                                    on_batch=save)
        have.update({a.index: a for a in new})
        print(f"generated {len(new)} answers in {time.perf_counter() - t:.0f} s -> {path}", flush=True)
    ordered = [have[i] for i in range(len(prompts))]
    return ordered[: args.n_calib], ordered[args.n_calib:]


def measure(hs, eval_rows) -> dict[str, list[float]]:
    """Per held-out prompt (one row each): token-mean nll, kl, agreement of the handle's current state against the
    original model (the same handle with nothing applied, in this thread)."""
    out = {"nll": [], "kl": [], "agreement": []}
    with torch.no_grad():
        for row in eval_rows:
            with hs.in_thread():
                lo = torch.log_softmax(data.row_logits(hs.model, row), -1)  # (N, V) the original
            lm = torch.log_softmax(data.row_logits(hs.model, row), -1)
            out["nll"].append(float(torch.nn.functional.nll_loss(lm, row.targets)))
            out["kl"].append(float((lo.exp() * (lo - lm)).sum(-1).mean()))
            out["agreement"].append(float((lo.argmax(-1) == lm.argmax(-1)).float().mean()))
    return out


class PeakRSS:
    """The peak resident memory of this process while inside (sampled every 50 ms), in GiB."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.05)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.gib = self.peak / 2 ** 30


def fmt_ci(v: float, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def cell_name(obj: str, gran: str, rank: int, n: int, lora_lr: float | None, init: str = "zero") -> str:
    return f"{obj}/{gran}/r{rank}/n{n}" + (f"/lr{lora_lr:g}" if rank else "") + ("/lsq" if rank and init == "lsq" else "")


def summarise(per: dict[str, list[float]], weights: list[int], ref: dict | None = None,
              zero: dict | None = None) -> dict:
    """Figures with intervals; paired differences against `ref` (the rank-0 cell) and `zero` (the same cell with
    the deltas starting from zero, for an lsq cell)."""
    row = {}
    for m in ("nll", "kl", "agreement"):
        row[m] = weighted_mean(per[m], weights)
        row[f"{m}_ci"] = list(mean_ci(per[m], weights))
        if ref is not None and m in ("kl", "agreement"):
            row[f"{m}_vs_r0"] = list(paired_diff_ci(per[m], ref[m], weights))
        if zero is not None and m in ("kl", "agreement"):
            row[f"{m}_vs_zero"] = list(paired_diff_ci(per[m], zero[m], weights))
    return row


def report(results: dict) -> None:
    for k, entry in sorted(results.get("ks", {}).items(), key=lambda kv: int(kv[0])):
        print(f"\nk = {k}, attention skipped {entry['blocks']}; original NLL {entry['original_nll']:.3f}; "
              f"held-out: {entry['eval_prompts']} prompts, {entry['eval_tokens']} answer tokens")
        print("| cell (objective/granularity/rank/training prompts/delta lr/start) | epochs | KL [95% CI] | "
              "top-1 agreement [95% CI] | ΔKL vs rank 0 | Δagreement vs rank 0 | ΔKL lsq vs zero start | "
              "Δagreement lsq vs zero | KL per epoch (0 = at the start) | train s | peak RSS GiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, c in entry["cells"].items():
            def delta(key):
                d = c.get(key)
                return "–" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" + (
                    " ✱" if excludes_zero(d[1:]) else "")
            curve = " → ".join(f"{e['kl']:.3f}" for e in c.get("per_epoch", []))
            if c.get("start_kl") is not None:
                curve = f"{c['start_kl']:.3f} → " + curve
            train_s = "–" if c.get("train_s") is None else f"{c['train_s']:.0f}"
            mem = "–" if c.get("peak_rss_gib") is None else f"{c['peak_rss_gib']:.2f}"
            print(f"| {name} | {c.get('epochs', 0)} | {fmt_ci(c['kl'], c['kl_ci'])} | "
                  f"{fmt_ci(c['agreement'], c['agreement_ci'])} | {delta('kl_vs_r0')} | {delta('agreement_vs_r0')} "
                  f"| {delta('kl_vs_zero')} | {delta('agreement_vs_zero')} "
                  f"| {curve or '–'} | {train_s} | {mem} |", flush=True)
    print("\n✱ = the 95% interval of the paired difference (same held-out prompts) excludes 0.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(Path.home() / ".cache/hopscotch/bench-recovery"),
                    help="folder for the cached answers, teacher and results")
    ap.add_argument("--ks", default="4,7")
    ap.add_argument("--objectives", default="kl")
    ap.add_argument("--granularities", default="channel")
    ap.add_argument("--lora-ranks", default="0,4,16,64", help="ranks of the low-rank deltas (0 = none)")
    ap.add_argument("--lora-lrs", default="1e-3", help="learning rates of the deltas (cells with rank > 0)")
    ap.add_argument("--delta-inits", default="zero,lsq",
                    help="how the deltas start (cells with rank > 0): zero (B = 0) | lsq (method/deltainit.py)")
    ap.add_argument("--calib-sizes", default="32,128,256",
                    help="training prompts per cell (the first N of the --n-calib answers)")
    data_size_flags(ap, n_calib=256, n_eval=32, max_new_tokens=128)
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--eval-prompts", type=int, default=32, help="use the first N held-out answers for the figures")
    ap.add_argument("--answer-cap", type=int, default=96, help="cut the cached answers to this many tokens")
    ap.add_argument("--batch-tokens", type=int, default=256, help="tokens per training step (row)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per cell (held-out figures after each)")
    ap.add_argument("--lr", type=float, default=3e-3, help="lr of the scalars and channel multipliers")
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--redo", action="store_true", help="measure cells already in results.json again")
    ap.add_argument("--report", action="store_true", help="only print the cells in results.json")
    ap.add_argument("--model", default="default", help="the model (the skip sets are the example runs')")
    smoke_flag(ap, "a tiny random model with the embedded model's tokenizer, k = 4, 2 + 2 prompts, answers <= 8 "
                   "tokens, ranks 0 and 2, one epoch, in a fresh --work folder")
    args = ap.parse_args(argv)
    if args.smoke:
        import tempfile

        smoke(args, work=tempfile.mkdtemp(prefix="bench-recovery-smoke-"), model=smoke_model_dir(), ks="4",
              calib_sizes="2", n_calib=2, n_eval=2, max_new_tokens=8, gen_batch=2, eval_prompts=2, answer_cap=8,
              batch_tokens=64, epochs=1, lora_ranks="0,2", delta_inits="zero,lsq", threads=1)
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    res_path = work / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {"ks": {}}
    if args.report:
        report(results)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_all = time.perf_counter()

    def save() -> None:
        atomic_write(res_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))

    model, tok = hc.load_model(args.model, device="cpu")
    calib_all, held = answers(model, tok, args, work)
    held = held[: args.eval_prompts]
    for a in calib_all + held:  # a subset of the one cached data set (it is generated at the larger sizes once)
        if len(a.response_ids) > args.answer_cap:
            a.response_ids, a.finished = a.response_ids[: args.answer_cap], False
    eval_rows = [data.pack([ex], 10 ** 9)[0] for ex in data.build_examples(held)]  # one row per prompt
    weights = [r.n_tokens for r in eval_rows]
    sizes = [int(x) for x in args.calib_sizes.split(",")]
    if max(sizes) > len(calib_all):
        raise SystemExit(f"--calib-sizes asks for {max(sizes)} prompts; --n-calib made {len(calib_all)}")
    ranks = [int(x) for x in args.lora_ranks.split(",")]
    inits = args.delta_inits.split(",")
    bad = [i for i in inits if i not in deltainit.DELTA_INITS]
    if bad:
        raise SystemExit(f"unknown --delta-inits {bad}; use {', '.join(deltainit.DELTA_INITS)}")
    lora_lrs = [float(x) for x in args.lora_lrs.split(",")]
    results["data"] = {"eval_prompts": len(held), "answer_cap": args.answer_cap,
                       "unfinished_eval": sum(not a.finished for a in held)}

    with hc.attach(model) as hs:
        for k in [int(x) for x in args.ks.split(",")]:
            blocks = skip_set(k)
            entry = results["ks"].setdefault(str(k), {"blocks": blocks, "cells": {}})
            if "unscaled" not in entry:
                hs.configure(blocks)
                base = measure(hs, eval_rows)
                hs.configure([])
                orig = measure(hs, eval_rows)
                entry.update(original_nll=weighted_mean(orig["nll"], weights), eval_prompts=len(held),
                             eval_tokens=sum(weights), unscaled=summarise(base, weights), unscaled_per=base)
                entry["cells"]["unscaled"] = {**entry["unscaled"], "epochs": 0}
                save()
            for n in sizes:
                calib = calib_all[:n]
                rows = data.pack(data.build_examples(calib), args.batch_tokens)
                teacher = None
                for obj in args.objectives.split(","):
                    if obj != "ce" and teacher is None:
                        t = time.perf_counter()
                        tpath = work / f"teacher-{args.batch_tokens}-n{n}-{len(rows)}.safetensors"
                        teacher = training.TeacherCache.load(tpath, rows)
                        if teacher is None:
                            hs.configure([])
                            teacher = training.TeacherCache.build(hs, rows)
                            teacher.save(tpath)
                            print(f"teacher for {n} prompts: {time.perf_counter() - t:.0f} s", flush=True)
                    for gran in args.granularities.split(","):
                        ref_name = cell_name(obj, gran, 0, n, None)
                        for rank in ranks:
                            for lora_lr, init in ([(lr, i) for lr in lora_lrs for i in inits] if rank
                                                  else [(None, "zero")]):
                                name = cell_name(obj, gran, rank, n, lora_lr, init)
                                if name in entry["cells"] and not args.redo:
                                    continue
                                hs.set_granularity(gran)
                                hs.set_lora_rank(rank)
                                hs.configure(blocks)
                                fit_s, fits, start_kl = 0.0, [], None
                                if init == "lsq":
                                    t = time.perf_counter()
                                    state, fits = deltainit.lsq_deltas(hs, rows, blocks)
                                    hs.set_lora(state)
                                    fit_s = time.perf_counter() - t
                                    start_kl = weighted_mean(measure(hs, eval_rows)["kl"], weights)
                                cfg = training.TrainConfig(args.lr, args.epochs, args.seed,
                                                           training.Objective(obj, args.kl_weight, teacher),
                                                           lora_lr=lora_lr or args.lr)
                                curve, in_eval = [], [0.0]

                                def on_epoch(epoch, record, scales, adam, curve=curve, in_eval=in_eval):
                                    t0 = time.perf_counter()
                                    per = measure(hs, eval_rows)
                                    curve.append({"epoch": epoch, "train_loss": record["train_loss"],
                                                  "kl": weighted_mean(per["kl"], weights),
                                                  "agreement": weighted_mean(per["agreement"], weights),
                                                  "per": per})
                                    in_eval[0] += time.perf_counter() - t0  # the held-out pass is not train time

                                t = time.perf_counter()
                                with PeakRSS() as mem:
                                    res = training.train_scales(hs, rows, (), cfg, on_epoch=on_epoch)
                                train_s = time.perf_counter() - t - in_eval[0]
                                last = curve[-1]["per"] if curve else measure(hs, eval_rows)
                                ref = entry["cells"].get(ref_name, {}).get("per") if rank else None
                                zero = (entry["cells"].get(cell_name(obj, gran, rank, n, lora_lr), {}).get("per")
                                        if init == "lsq" else None)
                                cell = {**summarise(last, weights, ref, zero), "status": res.status,
                                        "epochs": len(curve), "rows": len(rows),
                                        "calib_tokens": sum(r.n_tokens for r in rows), "init": init,
                                        "fit_s": fit_s, "fits": fits, "start_kl": start_kl,
                                        "train_s": train_s + fit_s, "peak_rss_gib": mem.gib, "per": last,
                                        "per_epoch": [{kk: vv for kk, vv in e.items() if kk != "per"} for e in curve]}
                                entry["cells"][name] = cell
                                save()
                                print(f"k={k} {name}: {res.status}, {train_s:.0f} s, held-out KL "
                                      + " -> ".join(f"{e['kl']:.3f}" for e in curve)
                                      + f", agreement {cell['agreement']:.3f}, peak {mem.gib:.2f} GiB", flush=True)
            hs.set_lora_rank(0)
            hs.set_granularity("scalar")
    results["total_s"] = results.get("total_s", 0) + time.perf_counter() - t_all
    save()
    report(results)
    print(f"this invocation: {time.perf_counter() - t_all:.0f} s ({args.threads} threads); results in {res_path}")


if __name__ == "__main__":
    main()
