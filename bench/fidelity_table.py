"""Markdown fidelity table from the eval.json of one or more runs (written by `hopscotch eval --run NAME`).

    .venv/bin/python bench/fidelity_table.py runs/NAME_K4 runs/NAME_K7
    .venv/bin/python bench/fidelity_table.py assets/example-run assets/example-run-k4

One row per variant and k: held-out NLL of the original model's own answers, KL(original || variant), top-1
agreement (teacher-forced), exact-match and final-answer agreement of greedy generations with the original's,
GSM8K flexible-extract accuracy, and the mean per-layer MMD^2 of hidden states over the layers after the first
skipped block.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def main(paths: list[str]) -> None:
    print("| k | variant | attention blocks | NLL | KL | top-1 agr. | exact match | answer agr. | GSM8K flex | "
          "mean MMD² |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        res = json.loads((Path(p) / "eval.json").read_text())
        mmd = res.get("layer_mmd", {})
        for r in res["rows"]:
            blocks = r["attention"]
            per = mmd.get(r["variant"])
            tail = per[min(blocks):] if per and blocks else None
            mean = sum(tail) / len(tail) if tail else None
            name = r["variant"] + (" (whole layers)" if r["mlp"] else "")
            print(f"| {r['k']} | {name} | {' '.join(map(str, blocks)) or '–'} | {fmt(r['nll'], '.3f')} | "
                  f"{fmt(r['kl'], '.3f')} | {fmt(r['agreement'], '.3f')} | {fmt(r['exact_match'], '.2f')} | "
                  f"{fmt(r['answer_agreement'], '.2f')} | {fmt(r['gsm8k_flexible'], '.2f')} | {fmt(mean, '.4f')} |")
        print(f"<!-- {p}: {res['prompts']} held-out prompts, {res['tokens']} answer tokens, generations <= "
              f"{res['max_new_tokens']} tokens -->")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
