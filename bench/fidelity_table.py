"""Markdown fidelity tables from the eval.json of one or more runs (written by `hopscotch eval --run NAME`).

    .venv/bin/python bench/fidelity_table.py runs/NAME_K4 runs/NAME_K7
    .venv/bin/python bench/fidelity_table.py assets/example-run-k4 assets/example-run
    .venv/bin/python bench/fidelity_table.py --smoke        # the same (the smallest setting, CI)
    .venv/bin/python bench/fidelity_table.py --readme assets/example-run-k4 assets/example-run   # README's table
    .venv/bin/python bench/fidelity_table.py --benchmarks assets/example-run-k4 assets/example-run   # per benchmark

First table, one row per variant and k: held-out NLL of the original model's own answers, KL(original || variant),
top-1 agreement (teacher-forced), final-answer agreement of greedy generations with the original's, each with its
95% bootstrap interval over the held-out prompts `[low, high]` (eval.json's `*_ci`; a file written before the
intervals gives the value alone), and the mean per-layer MMD^2 of hidden states over the layers from the first
skipped block on. Second table: eval.json's paired differences a - b over the same prompts (trained vs unscaled of
each skip set, hopscotch vs each baseline) with their 95% intervals; **bold** with ✱ where the interval excludes 0.

`--readme`: the README's short table instead: the original, and per run Hopscotch unscaled and trained and each
trained baseline, with KL, top-1 and final-answer agreement and their intervals, and the decode speed-up of the
skip set at context 512 where a run's bench.json (`hopscotch bench --run NAME [--also-k K]`) measured it; where some
run has a benchmarks.json (`hopscotch eval --run NAME --benchmarks olmes`), a last column with the accuracy kept
averaged over its benchmarks and its 95% interval ("–" for a run without one), right after the variant.

`--benchmarks`: per benchmark, the original's acc_per_char and each variant's with its accuracy kept, from the
runs' benchmarks.json (the README's and measurements' benchmark table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"hopscotch": "Hopscotch", "attn-bi": "attention BI", "shortgpt": "ShortGPT", "random": "random",
         "one-round": "one round"}
DIFF_COLUMNS = (("nll", "NLL"), ("kl", "KL"), ("agreement", "top-1 agr."), ("answer_agreement", "answer agr."))


def fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def with_ci(x, ci, spec: str) -> str:
    if x is None:
        return "–"
    if not isinstance(ci, list) or len(ci) != 2 or any(c is None for c in ci):
        return format(x, spec)
    return f"{x:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]"


def label(row: dict) -> str:
    name = NAMES.get(row["method"], row["method"])
    if row["variant"] == "original":
        return "original"
    return f"{name}{' (whole layers)' if row['mlp'] else ''}, {'trained' if row['scaled'] else 'unscaled'}"


def load(paths: list[str]) -> list[tuple[str, dict]]:
    """(run path, its eval.json) of each run."""
    return [(p, json.loads((Path(p) / "eval.json").read_text())) for p in paths]


def sources(results: list[tuple[str, dict]]) -> None:
    """One comment line per run under a table: what its figures were measured on."""
    for p, res in results:
        print(f"<!-- {p}: {res['prompts']} held-out prompts, {res['tokens']} answer tokens, generations <= "
              f"{res['max_new_tokens']} tokens -->")


def main(paths: list[str]) -> None:
    results = load(paths)
    print("| k | variant | attention blocks | NLL | KL | top-1 agr. | answer agr. | mean MMD² |")
    print("|---|---|---|---|---|---|---|---|")
    done_original = False
    for p, res in results:
        mmd = res.get("layer_mmd", {})
        for r in res["rows"]:
            if r["variant"] == "original":
                if done_original:
                    continue
                done_original = True
            blocks = r["attention"]
            per = mmd.get(r["variant"])
            tail = per[min(blocks):] if per and blocks else None
            mean = sum(tail) / len(tail) if tail else None
            print(f"| {r['k']} | {label(r)} | {' '.join(map(str, blocks)) or '–'} | "
                  f"{with_ci(r['nll'], r.get('nll_ci'), '.3f')} | {with_ci(r['kl'], r.get('kl_ci'), '.3f')} | "
                  f"{with_ci(r['agreement'], r.get('agreement_ci'), '.3f')} | "
                  f"{with_ci(r.get('answer_agreement'), r.get('answer_agreement_ci'), '.2f')} | {fmt(mean, '.4f')} |")
    sources(results)
    print()
    print("| k | a − b (same prompts) | " + " | ".join(h for _, h in DIFF_COLUMNS) + " |")
    print("|---|---|" + "---|" * len(DIFF_COLUMNS))
    for p, res in results:
        diffs = [d for d in res.get("diffs") or [] if d["b"] != "original"]
        if not diffs:
            print(f"| | {p}: no paired differences (eval.json from before the intervals; rerun `hopscotch eval`) |"
                  + " |" * len(DIFF_COLUMNS))
            continue
        rows = {r["variant"]: r for r in res["rows"]}
        for a, b in dict.fromkeys((d["a"], d["b"]) for d in diffs):
            cells = []
            for metric, _ in DIFF_COLUMNS:
                d = next((x for x in diffs if (x["a"], x["b"], x["metric"]) == (a, b, metric)), None)
                if d is None:
                    cells.append("–")
                    continue
                spec = ".2f" if metric == "answer_agreement" else ".3f"
                text = f"{d['diff']:+{spec}} [{d['ci'][0]:+{spec}}, {d['ci'][1]:+{spec}}]"
                cells.append(f"**{text}** ✱" if d["excludes_zero"] else text)
            print(f"| {rows[a]['k']} | {label(rows[a])} − {label(rows[b])} | " + " | ".join(cells) + " |")


def decode_speedups(results: list[tuple[str, dict]], context: int = 512) -> dict[tuple[int, ...], float]:
    """Skip set (sorted) -> median decode speed-up over the original at `context`, batch 1, from every run's
    bench.json; the compact copy's figure where both it and the skipped one were measured."""
    out: dict[tuple[int, ...], float] = {}
    for p, _ in results:
        f = Path(p) / "bench.json"
        if not f.is_file():
            continue
        for r in json.loads(f.read_text())["rows"]:
            if r.get("context") == context and r.get("batch", 1) == 1 and r.get("k"):
                key = tuple(sorted(r["blocks"]))
                if r["variant"] == "compact" or key not in out:
                    out[key] = r["speedup_decode"]
    return out


def benchmark_averages(paths: list[str]) -> dict[str, dict]:
    """Run path -> the average over benchmarks of its benchmarks.json (`hopscotch eval --run NAME --benchmarks
    olmes`): {"benchmarks": [...], "variants": {variant: {"acc_per_char", "kept", "kept_ci"}}}, with the file's
    documents, shots and source; runs without the file (or without an average) are left out."""
    out = {}
    for p in paths:
        f = Path(p) / "benchmarks.json"
        if not f.is_file():
            continue
        res = json.loads(f.read_text())
        avg = res.get("average") or {}
        if avg.get("variants"):
            entries = res.get("benchmarks") or {}
            out[p] = {**avg, "docs": sorted({e.get("docs") for e in entries.values()} - {None}),
                      "shots": sorted({e.get("shots") for e in entries.values()} - {None}),
                      "source": res.get("source", "?")}
    return out


def readme(paths: list[str]) -> None:
    results = load(paths)
    speed = decode_speedups(results)
    kept = benchmark_averages(paths)  # a column only when some run has benchmarks.json
    counts = sorted({len(a["benchmarks"]) for a in kept.values()})
    head = f" accuracy kept (avg of {'/'.join(map(str, counts))} benchmarks) |" if kept else ""
    print("| variant (k attention blocks skipped of 30) |" + head + " KL(original ‖ variant) | top-1 agreement | "
          "final-answer agreement | decode speed-up, ctx 512 |")
    print("|---|---|---|---|---|" + ("---|" if kept else ""))
    first = True
    for p, res in results:
        for r in res["rows"]:
            if r["variant"] == "original" and not first:
                continue
            if r["variant"] != "original" and r["method"] != "hopscotch" and not r["scaled"]:
                continue  # the baselines trained only: each method at its best
            first = False
            what = "original" if r["variant"] == "original" else f"k = {r['k']}: {label(r)} ({' '.join(map(str, r['attention']))})"
            up = 1.0 if r["variant"] == "original" else speed.get(tuple(sorted(r["attention"])))
            lead = ""
            if kept:  # the field's measure first: the share of the original's benchmark accuracy kept
                a = (kept.get(p) or {}).get("variants", {}).get(r["variant"]) or {}
                lead = (" 1.000 |" if r["variant"] == "original" and a else
                        f" {with_ci(a.get('kept'), a.get('kept_ci'), '.3f')} |")
            print(f"| {what} |{lead} {with_ci(r['kl'], r.get('kl_ci'), '.3f')} | "
                  f"{with_ci(r['agreement'], r.get('agreement_ci'), '.3f')} | "
                  f"{with_ci(r.get('answer_agreement'), r.get('answer_agreement_ci'), '.2f')} | "
                  f"{'–' if up is None or r['mlp'] else f'{up:.2f}×'} |")
    sources(results)
    for p, a in kept.items():
        print(f"<!-- {p}: accuracy kept = acc_per_char of the variant ÷ the original's, averaged over "
              f"{', '.join(a['benchmarks'])} ({'/'.join(map(str, a['docs']))} documents each, "
              f"{'/'.join(map(str, a['shots']))}-shot, {a['source']}); 95% bootstrap interval, documents "
              "resampled within each benchmark -->")


BENCH_VARIANTS = ("hopscotch-unscaled", "hopscotch", "attn-bi", "shortgpt", "random")


def per_benchmark(paths: list[str]) -> None:
    """Per benchmark: the original's acc_per_char, and per run and variant its acc_per_char and accuracy kept,
    each with its 95% interval, from the runs' benchmarks.json; the average last."""
    runs = [(p, json.loads((Path(p) / "benchmarks.json").read_text())) for p in paths
            if (Path(p) / "benchmarks.json").is_file()]
    if not runs:
        print("no benchmarks.json in these runs (hopscotch eval --run NAME --benchmarks olmes)")
        return
    names = list(dict.fromkeys(n for _, r in runs for n in r["benchmarks"]))
    print("| variant | " + " | ".join(names) + " | average |")
    print("|---|" + "---|" * (len(names) + 1))
    first = runs[0][1]
    cells = [with_ci(first["benchmarks"][n]["variants"]["original"]["acc_per_char"],
                     first["benchmarks"][n]["variants"]["original"].get("acc_per_char_ci"), ".3f")
             if n in first["benchmarks"] else "–" for n in names]
    avg = (first.get("average") or {}).get("variants", {}).get("original", {})
    print("| original: acc_per_char | " + " | ".join(cells) + f" | {fmt(avg.get('acc_per_char'), '.3f')} |")
    for p, res in runs:
        k = len(json.loads((Path(p) / "manifest.json").read_text()).get("selected") or [])
        for v in BENCH_VARIANTS:
            if not all(v in res["benchmarks"][n]["variants"] for n in res["benchmarks"]):
                continue
            row = []
            for n in names:
                f = res["benchmarks"].get(n, {}).get("variants", {}).get(v)
                row.append("–" if f is None else f"{f['acc_per_char']:.3f}, kept "
                           f"{with_ci(f.get('kept'), f.get('kept_ci'), '.2f')}")
            a = (res.get("average") or {}).get("variants", {}).get(v, {})
            method, scaled = (v.removesuffix("-unscaled"), not v.endswith("-unscaled"))
            what = f"k = {k}: {NAMES.get(method, method)}, {'trained' if scaled else 'unscaled'}"
            print(f"| {what} | " + " | ".join(row) + f" | {fmt(a.get('acc_per_char'), '.3f')}, kept "
                  f"{with_ci(a.get('kept'), a.get('kept_ci'), '.3f')} |")
    for p, res in runs:
        docs = {n: e["docs"] for n, e in res["benchmarks"].items()}
        print(f"<!-- {p}: {res.get('source')}; documents {docs}; acc_per_char with its 95% interval; kept = "
              "acc_per_char ÷ the original's on the same documents, 95% paired bootstrap interval -->")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    mode = {"--readme": readme, "--benchmarks": per_benchmark}.get(args[0], main)
    args = args[1:] if mode is not main else args
    if args in (["--smoke"], []):  # --smoke, the smallest setting (CI): the bundled example runs
        args = [str(Path(__file__).resolve().parents[1] / "assets" / r) for r in ("example-run-k4", "example-run")]
    mode(args)
