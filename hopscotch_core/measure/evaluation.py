"""Evaluate a finished run: every variant against the original model on the run's held-out prompts.

    hopscotch eval --run NAME --runs-dir runs          # writes runs/NAME/eval.json and eval.csv
    from hopscotch_core.measure.evaluation import evaluate_run
    result = evaluate_run(run, model, tok)             # the same dict as eval.json

Variants: the original model; the selected blocks unscaled (`hopscotch-unscaled`) and with the trained scalars
(`hopscotch`); each finished baseline unscaled (`NAME-unscaled`) and trained (`NAME`). Per variant:
- teacher-forced on the original model's own greedy answers (the run's answers.jsonl): `nll`/`ppl`,
  `kl` = mean per-token KL(original || variant), `agreement` = top-1 token agreement (metrics.compare);
- generated (batched greedy, KV cache on, `max_new_tokens` as in the run unless given): `exact_match` = share of
  prompts whose answer text equals the original model's answer generated the same way; `answer_agreement` =
  share of prompts whose last number (GSM8K flexible-extract) equals the original's, over the prompts where the
  original gives a number; `gsm8k_strict` / `gsm8k_flexible` = accuracy against the reference answers (when the
  prompts come with `#### N` references), with lm-evaluation-harness's two filters;
- `layer_mmd` (in eval.json only): per layer, unbiased MMD^2 between the original's and the variant's hidden
  states (metrics.layer_mmd: RBF, median heuristic, 512 tokens chosen with seed 0).
Generated answers are appended per batch to `eval-answers.jsonl`, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..method import data
from . import metrics
from ..errors import HopscotchError
from ..method.runs import Run, append_jsonl, read_json, read_jsonl, write_csv, write_json
from ..engine.scaling import attach

Progress = Callable[[int, int, dict], None]
COLUMNS = ("variant", "method", "scaled", "k", "attention", "mlp", "nll", "ppl", "kl", "agreement", "exact_match",
           "answer_agreement", "gsm8k_strict", "gsm8k_flexible")


class EvalError(HopscotchError, ValueError):
    """A run that cannot be evaluated (yet)."""


def last_scales(folder: Path) -> torch.Tensor | None:
    """The scalars after the last saved epoch in `folder` (scales/ or scales-NAME/), or None."""
    done = sorted(Path(folder).glob("epoch_*.safetensors"))
    return load_file(str(done[-1]))["scales"] if done else None


def last_channel_scales(folder: Path) -> torch.Tensor | None:
    """The per-channel multipliers after the last saved epoch (granularity channel), or None."""
    done = sorted(Path(folder).glob("epoch_*.safetensors"))
    return load_file(str(done[-1])).get("channel_scales") if done else None


def variants_of(run: Run) -> list[dict]:
    """The variants of a finished run: [{"variant", "method", "scaled", "attention", "mlp", "scales"}]."""
    m = run.manifest
    res = m.get("results") or {}
    if "eval_loss_trained" not in res or res.get("train_status") == "stopped":
        raise EvalError(f"run {run.name!r} has no finished training (state: {m.get('state')}, stage: "
                        f"{m.get('stage')}); finish it first: hopscotch run --resume {run.name}")
    trained = last_scales(run.file("scales"))
    if trained is None:
        raise EvalError(f"run {run.name!r} has no trained scalars in {run.file('scales')}")
    sel = list(m["selected"])
    out = [{"variant": "hopscotch-unscaled", "method": "hopscotch", "scaled": False, "attention": sel, "mlp": [],
            "scales": None},
           {"variant": "hopscotch", "method": "hopscotch", "scaled": True, "attention": sel, "mlp": [],
            "scales": trained, "channel_scales": last_channel_scales(run.file("scales"))}]
    for name, entry in (read_json(run.file("baselines.json"), {}) or {}).items():
        if not entry.get("done"):
            continue
        base = {"method": name, "attention": list(entry["attention"]), "mlp": list(entry.get("mlp", []))}
        out.append({**base, "variant": f"{name}-unscaled", "scaled": False, "scales": None})
        sc = last_scales(run.file(f"scales-{name}"))
        if sc is not None and entry.get("eval_loss_trained") is not None:
            out.append({**base, "variant": name, "scaled": True, "scales": sc,
                        "channel_scales": last_channel_scales(run.file(f"scales-{name}"))})
    return out


def _num_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def generation_scores(texts: list[str], reference: list[str], gold: list[str | None]) -> dict[str, float | None]:
    """exact_match / answer_agreement against the original's texts, GSM8K accuracy against `gold` answers."""
    n = len(texts)
    em = sum(t == r for t, r in zip(texts, reference)) / n if n else None
    ref_nums = [metrics.extract_flexible(r) for r in reference]
    pairs = [(metrics.extract_flexible(t), r) for t, r in zip(texts, ref_nums) if r is not None]
    agree = sum(_num_equal(a, b) for a, b in pairs) / len(pairs) if pairs else None
    golds = [(t, metrics.extract_strict(g)) for t, g in zip(texts, gold) if g]
    golds = [(t, g) for t, g in golds if g is not None]
    strict = flex = None
    if golds:
        strict = sum(_num_equal(metrics.extract_strict(t), g) for t, g in golds) / len(golds)
        flex = sum(_num_equal(metrics.extract_flexible(t), g) for t, g in golds) / len(golds)
    return {"exact_match": em, "answer_agreement": agree, "gsm8k_strict": strict, "gsm8k_flexible": flex}


def evaluate_run(run: Run, model, tok, max_new_tokens: int | None = None, gen_batch: int | None = None,
                 generate: bool = True, mmd: bool = True, on_progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Evaluate every variant of a finished run (see module docstring); writes eval.json + eval.csv."""
    variants = variants_of(run)
    s = run.manifest["settings"]
    max_new = int(max_new_tokens or s["max_new_tokens"])
    batch = int(gen_batch or s["gen_batch"])
    if max_new < 1 or batch < 1:
        raise EvalError("max-new-tokens and gen-batch must be at least 1")
    split = read_json(run.file("prompts.json"))
    answers = {a["index"]: data.Answer.from_json(a) for a in read_jsonl(run.file("answers.jsonl"))}
    nc = len(split["calib"])
    held = [answers[i] for i in sorted(answers) if i >= nc]
    if len(held) != len(split["eval"]):
        raise EvalError(f"run {run.name!r} lacks held-out answers ({len(held)} of {len(split['eval'])})")
    rows = data.pack(data.build_examples(held), s["batch_tokens"])
    prompts = [r["prompt"] for r in split["eval"]]
    gold = [r.get("answer") for r in split["eval"]]

    def progress(step: int, total: int, info: dict) -> None:
        if on_progress is not None:
            on_progress(step, total, info)

    stopped = should_stop or (lambda: False)
    out_rows: list[dict] = []
    layer_mmd: dict[str, list[float]] = {}
    with attach(model) as hs:
        progress(0, 1, {"stage": "eval: teacher-forced"})
        cfg = {v["variant"]: {"skipped": v["attention"], "scales": v["scales"], "skipped_mlp": v["mlp"],
                              "channel_scales": v.get("channel_scales")} for v in variants}
        tf = metrics.compare(hs, rows, cfg)
        texts: dict[str, list[str]] = {}
        if generate:
            path = run.file("eval-answers.jsonl")
            have = [r for r in read_jsonl(path) if r.get("max_new_tokens") == max_new]
            names = ["original", *cfg]
            for j, name in enumerate(names):
                if stopped():
                    break
                done = {r["index"]: r["text"] for r in have if r["variant"] == name}
                v = cfg.get(name, {})

                def save(b: list[data.Answer], name=name) -> None:
                    append_jsonl(path, [{"variant": name, "max_new_tokens": max_new, "index": a.index,
                                         "text": tok.decode(a.response_ids, skip_special_tokens=True)} for a in b])

                base = j * len(prompts) + len(done)  # progress counts prompts answered, over all variants

                def prog(step: int, total: int, info: dict, base=base, name=name) -> None:
                    progress(base + step, len(names) * len(prompts), {"stage": "eval: generate", "variant": name})

                if len(done) < len(prompts):
                    with hs.applied(v.get("skipped", ()), v.get("scales"), v.get("skipped_mlp", ()),
                                    v.get("channel_scales")):
                        new = data.generate_answers(model, tok, prompts, max_new, batch, skip=done, on_batch=save,
                                                    on_progress=prog, should_stop=stopped)
                    done.update({a.index: tok.decode(a.response_ids, skip_special_tokens=True) for a in new})
                if len(done) == len(prompts):
                    texts[name] = [done[i] for i in range(len(prompts))]
        if mmd and not stopped():
            for j, (name, v) in enumerate(cfg.items()):
                progress(j, len(cfg), {"stage": "eval: layer MMD", "variant": name})
                layer_mmd[name] = metrics.layer_mmd(hs, rows, v["skipped"], v["scales"],
                                                    skipped_mlp=v["skipped_mlp"],
                                                    channel_scales=v.get("channel_scales"))
    if stopped():
        return {"status": "stopped"}
    ref = texts.get("original")
    blank = {"exact_match": None, "answer_agreement": None, "gsm8k_strict": None, "gsm8k_flexible": None}
    orig_gen = generation_scores(ref, ref, gold) if ref is not None else blank
    out_rows.append({"variant": "original", "method": "original", "scaled": False, "k": 0, "attention": [],
                     "mlp": [], "nll": tf["original"]["nll"], "ppl": tf["original"]["ppl"], "kl": 0.0,
                     "agreement": 1.0, **orig_gen})
    for v in variants:
        name = v["variant"]
        gen = generation_scores(texts[name], ref, gold) if ref is not None and name in texts else blank
        out_rows.append({"variant": name, "method": v["method"], "scaled": v["scaled"], "k": len(v["attention"]),
                         "attention": v["attention"], "mlp": v["mlp"], "nll": tf[name]["nll"],
                         "ppl": tf[name]["ppl"], "kl": tf[name]["kl"], "agreement": tf[name]["agreement"], **gen})
    result = {"format_version": 1, "run": run.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "prompts": len(prompts), "tokens": tf["original"]["tokens"], "max_new_tokens": max_new,
              "rows": out_rows, "layer_mmd": layer_mmd, "status": "done"}
    write_json(run.file("eval.json"), result)
    write_csv(run.file("eval.csv"), out_rows, COLUMNS)
    return result


def format_table(result: dict) -> str:
    """eval.json as a plain-text table."""
    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    head = (f"{'variant':<22}{'blocks':<26}{'NLL':>7}{'KL':>7}{'top1':>7}{'EM':>6}{'ans':>6}{'flex':>6}"
            f"{'strict':>7}")
    lines = [head]
    for r in result["rows"]:
        blocks = " ".join(map(str, r["attention"])) + (" +MLP" if r["mlp"] else "")
        lines.append(f"{r['variant']:<22}{blocks:<26}{f(r['nll'], '.3f'):>7}{f(r['kl'], '.3f'):>7}"
                     f"{f(r['agreement'], '.3f'):>7}{f(r['exact_match'], '.2f'):>6}{f(r['answer_agreement'], '.2f'):>6}"
                     f"{f(r['gsm8k_flexible'], '.2f'):>6}{f(r['gsm8k_strict'], '.2f'):>7}")
    return "\n".join(lines)
