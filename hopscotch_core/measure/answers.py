"""Answers kept: how often a variant still gets right what the original gets right, on questions with known answers.

    hopscotch eval --run NAME --tasks answers        # runs/NAME/answers-kept.json
    from hopscotch_core.measure import answers
    qs = answers.probe(300, seed=0)                  # [{"question": ..., "answer": "36"}, ...]

A single side-by-side answer cannot tell whether a compressed model is worse: the original is sometimes wrong
too, and the compressed one sometimes right where the original is not. What a viewer needs is a share measured
over many questions. Two sets:
- `arithmetic`: a generated probe of one-step arithmetic and one-step word problems (addition, subtraction,
  multiplication, exact division) with known answers, from a fixed seed; a few hundred questions, so that even a
  small original gets enough right for the share to mean something. Each is asked through the chat template with
  "Answer with the number."; the reply's answer (`final_number`: after the "=" of its first equation, else its
  last number before a blank line) is compared with the known one.
- `gsm8k`: the run's held-out GSM8K prompts, from eval.json's generated answers (`hopscotch eval` with the
  generation task) when present.
Per variant: `acc` (its own accuracy) and `kept` = the share of the questions the original answers correctly that
the variant also answers correctly, each with a 95% bootstrap interval over questions (`kept_of` = how many the
original gets right). Generated texts are appended to answers-kept.jsonl as they come, so a stopped run resumes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AnswersError
from ..method import data, runs
from ..method.runs import Run, append_jsonl, read_json, read_jsonl, write_json
from . import metrics, stats

ANSWERS_FILE, TEXTS_FILE = runs.ANSWERS_KEPT_FILE, runs.ANSWERS_KEPT_TEXTS
FORMAT_VERSION = 1
PROBE_SIZE, PROBE_SEED, PROBE_TOKENS = 200, 0, 48
SUFFIX = " Answer with the number."

Progress = Callable[[int, int, dict], None]

_NAMES = ["Tom", "Ana", "Ravi", "Mei", "Sara", "Omar", "Lena", "Kofi", "Ines", "Jack"]
_THINGS = ["apples", "books", "marbles", "stickers", "pencils", "coins", "cards", "shells"]


def probe(n: int = PROBE_SIZE, seed: int = PROBE_SEED) -> list[dict[str, str]]:
    """`n` one-step questions with their integer answers, the same for the same seed: half bare arithmetic
    ("What is 17 + 25?"), half word problems, the four operations in turn."""
    if n < 1:
        raise AnswersError(f"the probe needs at least one question, got {n}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        op = "+-*/"[i % 4]
        if op == "+":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            c = a + b
        elif op == "-":
            a = rng.randint(10, 99)
            b = rng.randint(2, a - 1)
            c = a - b
        elif op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            c = a * b
        else:
            b, c = rng.randint(2, 12), rng.randint(2, 12)
            a = b * c
        if (i // 4) % 2 == 0:
            q = f"What is {a} {'x' if op == '*' else op} {b}?".replace(" x ", " * ")
        else:
            who, what = rng.choice(_NAMES), rng.choice(_THINGS)
            q = {"+": f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?",
                 "-": f"{who} has {a} {what} and gives away {b}. How many {what} does {who} have left?",
                 "*": f"{who} has {a} boxes with {b} {what} in each box. How many {what} does {who} have?",
                 "/": f"{who} shares {a} {what} equally among {b} friends. How many {what} does each friend get?"}[op]
        out.append({"question": q, "answer": str(c)})
    return out


def final_number(text: str) -> str | None:
    """The answer a one-step reply gives: the number after the last "=" of the first line that has one ("63 - 4 =
    59", "so 28 + 72 = 100 shells"), else the last number before the first blank line (what follows one is
    usually commentary: "4 * 7 = 28\n\nIn this scenario, I used the number 4 ...")."""
    for line in text.splitlines():
        if "=" in line:
            return metrics.extract_flexible(line.rsplit("=", 1)[1].strip().split(" ")[0]) or \
                metrics.extract_flexible(line.rsplit("=", 1)[1])
    return metrics.extract_flexible(text.split("\n\n", 1)[0])


def _right(text: str, answer: str) -> float:
    got = final_number(text)
    try:
        return float(got is not None and float(got) == float(answer))
    except ValueError:
        return 0.0


def shares(right: dict[str, list[float]]) -> dict[str, dict]:
    """Per variant: acc and kept (of the original's right answers) with 95% intervals; `right` holds 1.0 / 0.0 per
    question and variant, the original's under "original"."""
    orig = right["original"]
    theirs = [i for i, r in enumerate(orig) if r == 1.0]
    out = {}
    for name, vals in right.items():
        f: dict[str, Any] = {"acc": sum(vals) / len(vals), "acc_ci": list(stats.mean_ci(vals)),
                             "kept_of": len(theirs)}
        if theirs:
            kept = [vals[i] for i in theirs]
            f["kept"], f["kept_ci"] = sum(kept) / len(kept), list(stats.mean_ci(kept))
        else:
            f["kept"], f["kept_ci"] = None, None
        out[name] = f
    return out


def gsm8k_shares(eval_result: dict | None) -> dict | None:
    """The same shares on the run's held-out GSM8K prompts, from eval.json's per-prompt flexible-extract
    accuracy (None when eval.json has no generated answers)."""
    per = (eval_result or {}).get("per_prompt") or {}
    variants = per.get("variants") or {}
    if "original" not in variants or "gsm8k_flexible" not in variants["original"]:
        return None
    keep = [i for i, v in enumerate(variants["original"]["gsm8k_flexible"]) if v is not None]
    right = {name: [v["gsm8k_flexible"][i] for i in keep] for name, v in variants.items()
             if "gsm8k_flexible" in v and all(v["gsm8k_flexible"][i] is not None for i in keep)}
    if not keep:
        return None
    return {"questions": len(keep), "source": "the run's held-out GSM8K prompts (eval.json)",
            "variants": shares(right)}


def evaluate_answers(run: Run, model, tok, variants: dict[str, dict], n: int = PROBE_SIZE, seed: int = PROBE_SEED,
                     max_new_tokens: int = PROBE_TOKENS, batch: int = 16, on_progress: Progress | None = None,
                     should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Answers kept for `variants` ({name: handle configuration}, the original first, as
    benchmarks.run_variants gives them); writes answers-kept.json and returns it."""
    from ..engine.scaling import attach

    if "original" not in variants:
        raise AnswersError("answers kept are measured against the original: include it")
    qs = probe(n, seed)
    prompts = [q["question"] + SUFFIX for q in qs]
    key = {"seed": seed, "max_new_tokens": max_new_tokens}
    path = run.file(TEXTS_FILE)
    have: dict[str, dict[int, str]] = {}
    for r in read_jsonl(path):
        if all(r.get(k) == v for k, v in key.items()) and r.get("index", n) < n:
            have.setdefault(r["variant"], {})[r["index"]] = r["text"]
    stopped = should_stop or (lambda: False)
    total = len(variants) * n
    t0 = time.perf_counter()
    with attach(model) as hs:
        for j, (name, c) in enumerate(variants.items()):
            done = have.setdefault(name, {})
            if len(done) >= n:
                continue

            def save(b: list[data.Answer], name=name) -> None:
                append_jsonl(path, [{"variant": name, **key, "index": a.index,
                                     "text": tok.decode(a.response_ids, skip_special_tokens=True)} for a in b])

            def prog(step: int, _total: int, info: dict, base=j * n + len(done), name=name) -> None:
                if on_progress is not None:
                    on_progress(base + step, total, {"stage": "eval: answers kept", "variant": name})

            with hs.applied(**c):
                new = data.generate_answers(model, tok, prompts, max_new_tokens, batch, skip=set(done),
                                            on_batch=save, on_progress=prog, should_stop=stopped)
            done.update({a.index: tok.decode(a.response_ids, skip_special_tokens=True) for a in new})
            if stopped() or len(done) < n:
                return {"status": runs.STOPPED}
    right = {name: [_right(have[name][i], qs[i]["answer"]) for i in range(n)] for name in variants}
    result = {"format_version": FORMAT_VERSION, "run": run.name, "confidence": stats.CONFIDENCE,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": runs.DONE,
              "probes": {"arithmetic": {"questions": n, "seed": seed, "max_new_tokens": max_new_tokens,
                                        "source": f"generated one-step arithmetic and word problems (seed {seed})",
                                        "example": prompts[0], "variants": shares(right),
                                        "seconds": round(time.perf_counter() - t0, 1)}}}
    gsm = gsm8k_shares(read_json(run.file(runs.EVAL_FILE)))
    if gsm is not None:
        result["probes"]["gsm8k"] = gsm
    write_json(run.file(ANSWERS_FILE), result)
    return result


def read(run) -> dict | None:
    """A run's answers-kept.json (Run, RunView or folder), or None."""
    from pathlib import Path

    res = read_json(Path(getattr(run, "dir", run)) / ANSWERS_FILE)
    return res if isinstance(res, dict) and res.get("probes") else None


def format_table(result: dict) -> str:
    from .evaluation import with_ci

    lines = []
    for name, p in result["probes"].items():
        o = p["variants"]["original"]
        lines.append(f"{name}: {p['questions']} questions; the original answers {o['kept_of']} correctly")
        lines.append(f"  {'variant':<24}{'accuracy':>22}{'kept of the original':>26}")
        for v, f in p["variants"].items():
            lines.append(f"  {v:<24}{with_ci(f['acc'], f['acc_ci']):>22}{with_ci(f['kept'], f['kept_ci']):>26}")
    return "\n".join(lines)


def keep_rows(result: dict, variants: Sequence[str] = ()) -> list[dict]:
    """Flat rows (probe, variant, acc, acc_ci, kept, kept_ci, kept_of) for tables; `variants` restricts."""
    rows = []
    for name, p in (result or {}).get("probes", {}).items():
        for v, f in p["variants"].items():
            if not variants or v in variants:
                rows.append({"probe": name, "questions": p["questions"], "variant": v, **f})
    return rows
