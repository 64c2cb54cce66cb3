"""One paper-mode selection round on the embedded model (SmolLM2-135M, 30 candidates) on one process vs two
(torchrun, gloo), measured side by side in one run:

    .venv/bin/python bench/bench_distributed.py                      # 4 calibration prompts, answers <= 48 tokens
    .venv/bin/python bench/bench_distributed.py --n-calib 8 --repeats 2
    .venv/bin/python bench/bench_distributed.py --smoke               # the smallest setting (CI): seconds

The answers are generated once (`hopscotch generate`, one process); each variant then resumes a copy of that run
with `select --k 1` (round 0: every block trained one epoch), so every variant scores the same 30 candidates on
the same rows:
- 1 x 2: `python -m hopscotch_core select ...` with OMP_NUM_THREADS=2 (one process, both cores);
- 2 x 1: `python -m torch.distributed.run --standalone --nproc-per-node 2 -m hopscotch_core select ...` with
  OMP_NUM_THREADS=1 (the candidates dealt over 2 ranks);
- 1 x 1: one process, one thread: the per-candidate cost the 2 x 1 ranks each pay, so 1x1 / 2 is the ideal
  2 x 1 time and `overhead = (2x1) / ((1x1) / 2) - 1` is what distribution costs (collectives, the round's
  imbalance, a second model copy competing for memory bandwidth).
"select s" is the select stage as the run's manifest times it (rank 0; model loading excluded), "wall s" the
whole command (interpreter, model load per process). Variants alternate when --repeats > 1; medians are printed.
The selected block and the 30 scores must agree across variants (checked, printed). Last, the exchange costs
themselves, on 2 gloo ranks: one shard_map step (the gather after every N candidates / N answer batches) and one
all-reduce of the 4 x 30 + 1 scalar gradients and loss (every training step), medians of 200.
On a 2-core machine the 1x2 vs 2x1 ratio can at best be ~1x (two threads on one problem vs one each on two);
on GPUs the ranks do not share compute (see README, "Scale-out with torchrun"). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchargs import smoke, smoke_flag, smoke_model_dir  # noqa: E402
from hopscotch_core.fileio import atomic_write  # noqa: E402
VARIANTS = {  # name -> (processes, threads per process)
    "1x2": (1, 2),
    "2x1": (2, 1),
    "1x1": (1, 1),
}


def command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "hopscotch_core", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
            "hopscotch_core", *args]


def run(nproc: int, threads: int, args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    res = subprocess.run(command(nproc, args), env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"failed ({nproc} x {threads}): {' '.join(args)}\n{res.stderr[-3000:]}")
    return wall


def probe(rounds: int = 200) -> None:
    """Run under torchrun with 2 ranks: time the pipeline's exchanges; rank 0 prints JSON."""
    import torch

    from hopscotch_core.method import distributed

    g = distributed.init(timeout_s=120, device="cpu")
    grad = torch.zeros(4 * 30 + 1, dtype=torch.float64)
    times: dict[str, list[float]] = {"shard_map step": [], "gradient all-reduce": []}
    for _ in range(rounds):
        t = time.perf_counter()
        g.shard_map([0, 1], lambda i: float(i))
        times["shard_map step"].append(time.perf_counter() - t)
        t = time.perf_counter()
        g.all_reduce_sum(grad)
        times["gradient all-reduce"].append(time.perf_counter() - t)
    distributed.shutdown(g)
    if g.main:
        print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-calib", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--variants", default="1x2,2x1,1x1")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the exchange timing, under torchrun
    ap.add_argument("--model", default="default")
    smoke_flag(ap, "a tiny random model with the embedded model's tokenizer, 2 prompts, answers <= 8 tokens, "
                   "variant 2x1 only, 20 exchanges")
    a = ap.parse_args()
    if a.smoke and not a.probe:
        smoke(a, model=smoke_model_dir(), n_calib=2, max_new_tokens=8, variants="2x1")
    if a.probe:
        return probe(20 if a.smoke else 200)
    names = [v for v in a.variants.split(",") if v]
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    base = ["--model", a.model, "--data", "gsm8k", "--n-calib", str(a.n_calib), "--n-eval", "2",
            "--max-new-tokens", str(a.max_new_tokens), "--gen-batch", "4", "--k", "1", "--mode", "paper",
            "--seed", "0", "--device", "cpu", "--batch-tokens", "4096"]
    try:
        print(f"answers: {a.n_calib} calibration prompts, <= {a.max_new_tokens} tokens (one process) ...",
              flush=True)
        run(1, 2, ["generate", *base, "--runs-dir", str(tmp / "prep"), "--name", "r"])
        rows = json.loads((tmp / "prep" / "r" / "manifest.json").read_text())["data"]
        print(f"calibration data: {rows['calib_examples']} examples, {rows['calib_rows']} row(s), "
              f"{rows['calib_tokens']} answer tokens; a round scores 30 candidates one epoch each", flush=True)
        got: dict[str, dict[str, list]] = {v: {"wall": [], "select": [], "scores": [], "selected": []} for v in names}
        for rep in range(a.repeats):
            for v in names:
                nproc, threads = VARIANTS[v]
                runs = tmp / f"{v}-{rep}"
                shutil.copytree(tmp / "prep", runs)
                wall = run(nproc, threads, ["select", *base, "--runs-dir", str(runs), "--name", "r"])
                m = json.loads((runs / "r" / "manifest.json").read_text())
                scores = [json.loads(line) for line in (runs / "r" / "scores.jsonl").read_text().splitlines()]
                got[v]["wall"].append(wall)
                got[v]["select"].append(m["timings"]["select"])
                got[v]["scores"] = {s["candidate"]: s["loss"] for s in scores}
                got[v]["selected"] = m["selected"]
                print(f"  {v}: wall {wall:.1f} s, select {m['timings']['select']:.1f} s", flush=True)
        med = {v: {k: statistics.median(got[v][k]) for k in ("wall", "select")} for v in names}
        print(f"\n{'variant':<10}{'processes x threads':>20}{'wall s':>10}{'select s':>10}{'speed-up vs 1x2':>17}")
        for v in names:
            sp = med["1x2"]["select"] / med[v]["select"] if "1x2" in med else float("nan")
            print(f"{v:<10}{'{} x {}'.format(*VARIANTS[v]):>20}{med[v]['wall']:>10.1f}{med[v]['select']:>10.1f}{sp:>16.2f}x")
        out = {"n_calib": a.n_calib, "max_new_tokens": a.max_new_tokens, "repeats": a.repeats, "median": med,
               "load": os.getloadavg()}
        if "1x1" in med and "2x1" in med:
            ideal = med["1x1"]["select"] / 2
            out["overhead"] = med["2x1"]["select"] / ideal - 1
            print(f"\n2 x 1 vs the ideal (1 x 1) / 2 = {ideal:.1f} s: overhead {100 * out['overhead']:+.1f}%; "
                  f"2-rank efficiency {ideal / med['2x1']['select']:.2f} (1.0 = perfect)")
        ref = got[names[0]]
        agree = all(got[v]["selected"] == ref["selected"] and got[v]["scores"].keys() == ref["scores"].keys()
                    and max(abs(got[v]["scores"][c] - ref["scores"][c]) for c in ref["scores"]) < 1e-5
                    for v in names)
        print(f"selected {ref['selected']} in every variant; 30 scores agree within 1e-5: {agree}")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              str(Path(__file__).resolve()), "--probe", *(["--smoke"] if a.smoke else [])], env=env, capture_output=True, text=True,
                             check=False)
        if res.returncode == 0:
            out["exchange_s"] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"exchanges on 2 gloo ranks (median of {20 if a.smoke else 200}): " + ", ".join(
                f"{k} {1e3 * v:.2f} ms" for k, v in out["exchange_s"].items()))
            per = med["1x1"]["select"] / 30 if "1x1" in med else None
            if per:
                print(f"one candidate (1 x 1) {per:.2f} s: one exchange per 2 candidates is "
                      f"{100 * out['exchange_s']['shard_map step'] / (2 * per):.3f}% of their training")
        print(f"load average during the run (1/5/15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if a.json:
            atomic_write(a.json, json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
