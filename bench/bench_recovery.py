"""Recovery objectives x granularities on the embedded model: which scale training restores the original?

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/bench_recovery.py --work ~/.cache/hopscotch/bench-recovery

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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hopscotch_core as hc  # noqa: E402
from benchargs import data_size_flags  # noqa: E402
from hopscotch_core.fileio import atomic_write  # noqa: E402
from hopscotch_core.measure.stats import excludes_zero, mean_ci, paired_diff_ci, weighted_mean  # noqa: E402
from hopscotch_core.method import data, training  # noqa: E402

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


def per_prompt(hs, eval_rows, variants: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """Per held-out prompt (one row each): token-mean nll, kl, agreement of each variant; the original once."""
    out = {name: {"nll": [], "kl": [], "agreement": []} for name in ["original", *variants]}
    with torch.no_grad():
        for row in eval_rows:
            hs.reset()
            lo = torch.log_softmax(data.row_logits(hs.model, row), -1)  # (N, V) the original, once per prompt
            tgt = row.targets
            out["original"]["nll"].append(float(torch.nn.functional.nll_loss(lo, tgt)))
            for name, v in variants.items():
                hs.configure(v["skipped"], v.get("scales"), channel_scales=v.get("channel_scales"))
                lm = torch.log_softmax(data.row_logits(hs.model, row), -1)
                out[name]["nll"].append(float(torch.nn.functional.nll_loss(lm, tgt)))
                out[name]["kl"].append(float((lo.exp() * (lo - lm)).sum(-1).mean()))
                out[name]["agreement"].append(float((lo.argmax(-1) == lm.argmax(-1)).float().mean()))
    hs.reset()
    return out


def fmt_ci(v: float, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(Path.home() / ".cache/hopscotch/bench-recovery"),
                    help="folder for the cached answers, teacher and results")
    ap.add_argument("--ks", default="4,7")
    ap.add_argument("--objectives", default="ce,kl,ce+kl")
    ap.add_argument("--granularities", default="scalar,channel")
    data_size_flags(ap, n_calib=32, n_eval=32, max_new_tokens=128)
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--train-prompts", type=int, default=16, help="use the first N calibration answers for training")
    ap.add_argument("--eval-prompts", type=int, default=24, help="use the first N held-out answers for the figures")
    ap.add_argument("--answer-cap", type=int, default=96, help="cut the cached answers to this many tokens")
    ap.add_argument("--batch-tokens", type=int, default=256, help="tokens per training step (row)")
    ap.add_argument("--epochs", type=int, default=3, help="the pipeline's default (one epoch at lr 1e-2 was measured "
                    "too coarse to help: README)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    model, tok = hc.load_model("default", device="cpu")
    calib, held = answers(model, tok, args, work)
    calib, held = calib[: args.train_prompts], held[: args.eval_prompts]
    for a in calib + held:  # a subset of the one cached data set (it is generated at the larger sizes once)
        if len(a.response_ids) > args.answer_cap:
            a.response_ids, a.finished = a.response_ids[: args.answer_cap], False
    rows = data.pack(data.build_examples(calib), args.batch_tokens)
    eval_rows = [data.pack([ex], 10 ** 9)[0] for ex in data.build_examples(held)]  # one row per prompt
    weights = [r.n_tokens for r in eval_rows]
    unfinished = sum(not a.finished for a in calib + held)
    print(f"data: {len(calib)} calibration / {len(held)} held-out prompts, answers <= {args.answer_cap} tokens "
          f"({unfinished} hit the cap); {sum(r.n_tokens for r in rows)} calibration / {sum(weights)} held-out "
          f"answer tokens; {len(rows)} steps per epoch", flush=True)

    results: dict = {"settings": vars(args), "ks": {}}
    with hc.attach(model) as hs:
        t = time.perf_counter()
        tpath = work / f"teacher-{args.batch_tokens}-{len(rows)}.safetensors"
        teacher = training.TeacherCache.load(tpath, rows)
        if teacher is None:
            teacher = training.TeacherCache.build(hs, rows)
            teacher.save(tpath)
        t_teacher = time.perf_counter() - t
        print(f"teacher top-{teacher.top_k} log-probs: {t_teacher:.1f} s", flush=True)
        for k in [int(x) for x in args.ks.split(",")]:
            blocks = skip_set(k)
            variants = {"unscaled": {"skipped": blocks}}
            times = {}
            for obj in args.objectives.split(","):
                for gran in args.granularities.split(","):
                    name = f"{obj}/{gran}"
                    hs.set_granularity(gran)
                    hs.configure(blocks)
                    cfg = training.TrainConfig(args.lr, args.epochs, args.seed,
                                               training.Objective(obj, args.kl_weight, teacher))
                    t = time.perf_counter()
                    res = training.train_scales(hs, rows, (), cfg)
                    times[name] = time.perf_counter() - t
                    variants[name] = {"skipped": blocks, "scales": res.scales, "channel_scales": res.channel_scales,
                                      "status": res.status}
                    print(f"k={k} trained {name}: {res.status}, {times[name]:.0f} s, last train loss "
                          f"{res.epochs[-1]['train_loss'] if res.epochs else float('nan'):.4f}", flush=True)
                    hs.set_granularity("scalar")
            t = time.perf_counter()
            per = per_prompt(hs, eval_rows, variants)
            t_eval = time.perf_counter() - t
            paper = "ce/scalar" if "ce/scalar" in variants else None
            table = []
            for name in variants:
                row = {"variant": name, "train_s": times.get(name)}
                for m in ("nll", "kl", "agreement"):
                    vals = per[name][m]
                    row[m] = weighted_mean(vals, weights)
                    row[f"{m}_ci"] = list(mean_ci(vals, weights))
                    if paper and name != paper and m in ("kl", "agreement"):
                        d, lo, hi = paired_diff_ci(vals, per[paper][m], weights)
                        row[f"{m}_vs_paper"] = [d, lo, hi]
                table.append(row)
            orig = weighted_mean(per["original"]["nll"], weights)
            results["ks"][str(k)] = {"blocks": blocks, "original_nll": orig, "eval_s": t_eval, "rows": table}
            atomic_write(work / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
            print(f"\nk = {k}, attention skipped {blocks}; original NLL {orig:.3f}; evaluation of "
                  f"{len(variants)} variants {t_eval:.0f} s")
            print("| variant | NLL [95% CI] | KL [95% CI] | top-1 agreement [95% CI] | ΔKL vs paper | "
                  "Δagreement vs paper | train s |")
            print("|---|---|---|---|---|---|---|")
            for r in table:
                def delta(key):
                    d = r.get(key)
                    return "–" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" + (
                        "*" if excludes_zero(d[1:]) else "")
                label = r["variant"] + (" (paper)" if r["variant"] == paper else "")
                train_s = "–" if r["train_s"] is None else f"{r['train_s']:.0f}"
                print(f"| {label} | {fmt_ci(r['nll'], r['nll_ci'])} | {fmt_ci(r['kl'], r['kl_ci'])} | "
                      f"{fmt_ci(r['agreement'], r['agreement_ci'])} | {delta('kl_vs_paper')} | "
                      f"{delta('agreement_vs_paper')} | {train_s} |", flush=True)
    results["teacher_s"] = t_teacher
    results["total_s"] = time.perf_counter() - t_all
    atomic_write(work / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    print(f"\n* = the 95% interval of the paired difference excludes 0. Total {results['total_s']:.0f} s "
          f"({args.threads} threads); results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
