"""Which KL teacher is faster on the embedded model: a forward per step, or top-k log-probs cached once?

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_teacher.py --work ~/.cache/hopscotch/bench-recovery
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/bench_teacher.py --smoke     # the smallest setting (CI)

On the first --n examples of the calibration answers bench_recovery.py cached in --work (skip set of
assets/example-run-k4), it times, side by side in one process: one epoch of KL scale training with the teacher
recomputed at every step (exact KL, no_grad forward of the same model with nothing skipped), the one-time build of
the top-k cache, and one epoch with the cache. It also prints the gap between the cached (coarsened) KL and the
exact KL at the untrained and the trained scalars.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hopscotch_core as hc  # noqa: E402
from benchargs import smoke_flag, smoke_model_dir  # noqa: E402
from hopscotch_core.method import data, training  # noqa: E402


def smoke_answers(model_dir: str) -> str:
    """A fresh work folder holding the model's own greedy answers (<= 8 tokens) to 2 GSM8K prompts."""
    import tempfile

    model, tok = hc.load_model(model_dir, device="cpu")
    prompts = [r["prompt"] for r in data.load_prompts("gsm8k")[:2]]
    work = Path(tempfile.mkdtemp(prefix="bench-teacher-smoke-"))
    answers = data.generate_answers(model, tok, prompts, 8, 2)
    (work / "answers-smoke.jsonl").write_text("".join(json.dumps(a.to_json()) + "\n" for a in answers))
    return str(work)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(Path.home() / ".cache/hopscotch/bench-recovery"))
    ap.add_argument("--n", type=int, default=8, help="calibration examples")
    ap.add_argument("--batch-tokens", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=training.TEACHER_TOP_K)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="default")
    smoke_flag(ap, "a tiny random model with the embedded model's tokenizer, its own answers to 2 prompts "
                   "(<= 8 tokens) in a fresh --work folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.model, args.n, args.batch_tokens = smoke_model_dir(), 2, 64
        args.work = smoke_answers(args.model)
    files = sorted(Path(args.work).expanduser().glob("answers-*.jsonl"))
    if not files:
        raise SystemExit(f"no cached answers in {args.work}: run bench/bench_recovery.py first")
    answers = [data.Answer.from_json(json.loads(line)) for line in files[0].read_text().splitlines()]
    rows = data.pack(data.build_examples(sorted(answers, key=lambda a: a.index)[: args.n]), args.batch_tokens)
    blocks = json.loads((ROOT / "assets/example-run-k4/manifest.json").read_text())["selected"]
    model, _ = hc.load_model(args.model, device="cpu")
    tokens = sum(r.n_tokens for r in rows)
    out = {}
    with hc.attach(model) as hs:
        def epoch(obj):
            hs.configure(blocks)
            t = time.perf_counter()
            training.train_scales(hs, rows, (), training.TrainConfig(3e-3, 1, 0, obj))
            return time.perf_counter() - t

        out["per_step"] = epoch(training.Objective("kl"))
        t = time.perf_counter()
        cache = training.TeacherCache.build(hs, rows, args.top_k)
        out["cache_build"] = time.perf_counter() - t
        out["cached"] = epoch(training.Objective("kl", teacher=cache))
        gaps = []
        for label, trained in (("unscaled", False), ("trained", True)):
            if not trained:
                hs.configure(blocks)
            with torch.no_grad():
                exact = training.dataset_objective(hs, rows, training.Objective("kl"))
                coarse = sum(float(cache.kl(i, torch.log_softmax(data.row_logits(model, r), -1))) * r.n_tokens
                             for i, r in enumerate(rows)) / tokens
            gaps.append(f"{label}: exact {exact:.4f}, top-{args.top_k} {coarse:.4f}")
            if not trained:
                training.train_scales(hs, rows, (), training.TrainConfig(3e-3, 1, 0,
                                                                         training.Objective("kl", teacher=cache)))
    print(f"{len(rows)} rows, {tokens} answer tokens, {args.threads} thread(s), skip {blocks}")
    print(f"one KL epoch, teacher forward per step: {out['per_step']:.1f} s")
    print(f"top-{args.top_k} cache build (once):       {out['cache_build']:.1f} s")
    print(f"one KL epoch with the cache:           {out['cached']:.1f} s  "
          f"(per-step / cached = {out['per_step'] / out['cached']:.2f}x)")
    print(f"E epochs + selection scoring reuse the cache: per-step costs E * {out['per_step']:.0f} s, cached "
          f"{out['cache_build']:.0f} + E * {out['cached']:.0f} s")
    print("KL on these rows: " + "; ".join(gaps))


if __name__ == "__main__":
    main()
