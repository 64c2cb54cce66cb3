"""How long are the model's own greedy answers? Share of answers that end (EOS) within each cap.

    .venv/bin/python bench/answer_lengths.py                       # embedded model, 32 calibration prompts, cap 320
    .venv/bin/python bench/answer_lengths.py --n 32 --cap 768 --model DIR --data my.jsonl
    .venv/bin/python bench/answer_lengths.py --smoke                # the smallest setting (CI): seconds

Prompts: the first `--n` of the default split (RunSettings defaults, seed 0: calibration prompts first, then
held-out ones), answered as a run answers them (data.generate_answers, chat template, batches of --batch). Prints
the lengths, the wall time, and for each cap how many answers ended within it (an answer cut at --cap never ends
within any smaller cap either). Used to choose the default --max-new-tokens (README, "Default sizes").
"""

from __future__ import annotations

import argparse
import json
import time

from benchargs import smoke, smoke_flag, smoke_model_dir
from hopscotch_core.engine.loading import load_model
from hopscotch_core.method import data
from hopscotch_core.method.settings import RunSettings

CAPS = (96, 128, 160, 192, 224, 256, 288, 320, 384, 512, 768)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="gsm8k")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--cap", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    smoke_flag(ap, "2 prompts, cap 96 tokens, on a tiny random model with the embedded model's tokenizer")
    args = smoke(ap.parse_args(), n=2, cap=96, batch=2)
    if args.smoke:
        args.model = smoke_model_dir()
    model, tok = load_model(args.model, device="cpu")
    records = data.load_prompts(args.data)
    s = RunSettings()
    calib, held = data.split_indices(len(records), *s.split_sizes(len(records)), s.seed)
    prompts = [records[i]["prompt"] for i in (calib + held)[:args.n]]
    t = time.time()
    answers = data.generate_answers(model, tok, prompts, args.cap, args.batch)
    wall = time.time() - t
    lengths = [len(a.response_ids) for a in answers]
    ended = {c: sum(1 for a in answers if a.finished and len(a.response_ids) <= c) for c in CAPS if c <= args.cap}
    print(json.dumps({"n": len(answers), "cap": args.cap, "wall_s": round(wall, 1), "lengths": lengths,
                      "ended_within": ended}))
    print("| cap | " + " | ".join(map(str, ended)) + " |")
    print("|---|" + "---|" * len(ended))
    print(f"| ended, of {len(answers)} | " + " | ".join(map(str, ended.values())) + " |")


if __name__ == "__main__":
    main()
