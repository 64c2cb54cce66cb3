"""Does a run's stock `hf` export reproduce the run's held-out fidelity in stock transformers?

    OMP_NUM_THREADS=1 .venv/bin/python bench/check_hf_export.py --run-dir assets/example-run-k4
    ... --smoke          (a tiny finished run made on the spot, CI: seconds)

It exports the run's trained adapter with `hopscotch export --format hf` (every scalar, multiplier and delta
folded into the weights), then, in a fresh Python process that imports only torch and transformers, loads the
exported folder and the original model's folder with `AutoModelForCausalLM.from_pretrained` and teacher-forces
both on the original's greedy answers to the run's held-out prompts (answers.jsonl, its token ids as the run
stored them). It prints KL(original || export) and top-1 agreement (token means over the answer positions, as
`hopscotch eval` reports them) beside the run's eval.json figures for its trained variant, and their
differences. The two are independent computations of the same quantity: the run's figures come from our engine
(forward hooks on the attached model), these from a stock checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run in a fresh interpreter: stock transformers and torch only, nothing of ours
STOCK = r"""
import json, sys, torch, transformers
torch.set_num_threads(int(sys.argv[4]))
orig_dir, export_dir, answers = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read())
load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
original, exported = load(orig_dir), load(export_dir)
kl_sum = agree = n = 0.0
with torch.no_grad():
    for a in answers:
        ids = torch.tensor([a["prompt_ids"] + a["response_ids"]])
        p = len(a["prompt_ids"])
        keep = slice(p - 1, ids.shape[1] - 1)  # the positions that predict the answer's tokens
        lo = torch.log_softmax(original(ids).logits[0, keep].double(), -1)
        lm = torch.log_softmax(exported(ids).logits[0, keep].double(), -1)
        kl_sum += float((lo.exp() * (lo - lm)).sum())
        agree += float((lo.argmax(-1) == lm.argmax(-1)).sum())
        n += lo.shape[0]
print(json.dumps({"kl": kl_sum / n, "agreement": agree / n, "tokens": int(n), "prompts": len(answers)}))
"""


def held_out_answers(run_dir: Path) -> list[dict]:
    split = json.loads((run_dir / "prompts.json").read_text())
    n_calib = len(split["calib"])
    rows = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if r["index"] >= n_calib), key=lambda r: r["index"])


def original_dir(run_dir: Path) -> str:
    source = json.loads((run_dir / "manifest.json").read_text())["settings"]["model"]
    if source != "default":
        return source
    from hopscotch_core.engine.stamps import _default_cache_path  # the converted safetensors folder

    return str(_default_cache_path())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", help="a finished run's folder (with eval.json)")
    ap.add_argument("--out", help="where to write the export (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="a tiny finished run made here (CI)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="check-hf-"))
    if args.smoke:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers.runs import finished_run  # a tiny qwen2 run "r" in root/runs, its model in root/m

        root = finished_run(work)
        run_dir, model_dir = root / "runs" / "r", str(root / "m")
    else:
        if not args.run_dir:
            raise SystemExit("give --run-dir (or --smoke)")
        run_dir = Path(args.run_dir).resolve()
        model_dir = original_dir(run_dir)
    out = Path(args.out) if args.out else work / "hf"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "hopscotch_core.cli", "export", "--run", run_dir.name, "--runs-dir",
           str(run_dir.parent), "--format", "hf", "--out", str(out), "--force", "--device", "cpu"]
    if args.smoke:
        cmd += ["--model", model_dir]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    if not (run_dir / "eval.json").is_file():
        subprocess.run([sys.executable, "-m", "hopscotch_core.cli", "eval", "--run", run_dir.name, "--runs-dir",
                        str(run_dir.parent), "--tasks", "fidelity", "--device", "cpu"], check=True, env=env, cwd=ROOT)
    answers_file = work / "answers.json"
    answers_file.write_text(json.dumps(held_out_answers(run_dir)))
    res = subprocess.run([sys.executable, "-c", STOCK, model_dir, str(out), str(answers_file), str(args.threads)],
                         check=True, capture_output=True, text=True, env=env)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    ev = json.loads((run_dir / "eval.json").read_text())
    row = next(r for r in ev["rows"] if r["variant"] == "hopscotch")
    print(f"{run_dir.name}: {got['prompts']} held-out prompts, {got['tokens']} answer tokens")
    print("| figure | hopscotch eval (our engine) | stock transformers, hf export | difference |")
    print("|---|---|---|---|")
    for key in ("kl", "agreement"):
        print(f"| {key} | {row[key]:.4f} | {got[key]:.4f} | {got[key] - row[key]:+.5f} |")
    if args.smoke:
        for key in ("kl", "agreement"):
            assert abs(got[key] - row[key]) <= 1e-3 * max(1.0, abs(row[key])), (key, got[key], row[key])


if __name__ == "__main__":
    main()
