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
  states (metrics.layer_mmd's values: RBF, median heuristic, 512 tokens chosen with seed 0), taken by forward hooks
  in the teacher-forced passes above (metrics.compare), so it costs no forward pass of its own.
Generated answers are appended per batch to `eval-answers.jsonl`, so an interrupted evaluation resumes. The
original's answers are not generated again when the run already holds them: with `max_new_tokens` equal to the
run's, its answers.jsonl answers exactly these prompts greedily with the same chat template (their prompt tokens are
checked), so their texts are taken from there (`reused_answers`, recorded with `"reused": true`).

Statistics (measure/stats.py): every figure of every row has a 95% bootstrap interval over prompts, `FIG_ci` =
[low, high] (`nll_ci`, `kl_ci`, `agreement_ci`, `answer_agreement_ci`, `exact_match_ci`, `gsm8k_strict_ci`,
`gsm8k_flexible_ci`; None where the figure is). NLL, KL and agreement are token means, so a prompt's weight is its
response tokens; the answer-level figures are 0/1 per prompt, over the prompts the figure counts. eval.json keeps
the per-prompt values (`per_prompt`: prompt hashes, tokens, per variant and figure one value per held-out prompt,
None where the prompt does not count) so that the difference between any two variants evaluated on the same
prompts gets a paired interval: `diffs` (every variant vs the original, trained vs unscaled of each skip set,
hopscotch vs each baseline) and `compare_variants(run, a, b)` for any pair, also across two runs whose held-out
prompts and answers are the same. Files written before the intervals have no `_ci` fields (readers show none).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..method import data
from . import metrics, stats
from ..errors import EvalError
from ..method import runs
from ..method.runs import Run, append_jsonl, read_json, read_jsonl, write_csv, write_json
from ..engine.artifacts import LORA_PREFIX
from ..engine.lowrank import split_state
from ..engine.scaling import attach

Progress = Callable[[int, int, dict], None]
FIGURES = ("nll", "kl", "agreement", "exact_match", "answer_agreement", "gsm8k_strict", "gsm8k_flexible")
MMD_TOKENS, MMD_SEED = 512, 0  # layer_mmd's tokens: this many positions of the held-out rows, chosen with this seed
TOKEN_FIGURES = ("nll", "kl", "agreement")  # token means: a prompt weighs its response tokens
GENERATION_FIGURES = ("exact_match", "answer_agreement", "gsm8k_strict", "gsm8k_flexible")
COLUMNS = ("variant", "method", "scaled", "k", "attention", "mlp", "nll", "ppl", "kl", "agreement", "exact_match",
           "answer_agreement", "gsm8k_strict", "gsm8k_flexible",
           *(f"{f}_ci_{end}" for f in FIGURES for end in ("low", "high")))


def last_epoch_state(folder: Path) -> dict[str, torch.Tensor] | None:
    """The tensors saved after the last epoch in `folder` (scales/ or scales-NAME/): "scales", with granularity
    channel also "channel_scales", and the Adam state; None before the first epoch (runs.last_epoch, the format's
    reader, gives the epoch number too)."""
    return runs.last_epoch(folder)[1]


def last_scales(folder: Path) -> torch.Tensor | None:
    """The scalars after the last saved epoch in `folder`, or None."""
    saved = last_epoch_state(folder)
    return saved["scales"] if saved is not None else None


def trained_state(run: Run) -> dict[str, torch.Tensor] | None:
    """The selected set's trained tensors (scales, channel_scales, lora.*): the run's saved adapter, which is what
    exports fold and the app applies, else (a run stopped before saving it) the last epoch. An epoch file may
    have been trimmed to its scalars (the bundled example runs keep no optimizer state); the adapter has every part."""
    f = run.file(runs.ADAPTER_DIR) / "scales.safetensors"
    if f.is_file():
        from safetensors.torch import load_file

        return load_file(str(f))
    return last_epoch_state(run.file(runs.SCALES_DIR))


def variants_of(run: Run) -> list[dict]:
    """The variants of a finished run: [{"variant", "method", "scaled", "attention", "mlp", "scales"}]."""
    m = run.manifest
    res = m.get("results") or {}
    if "eval_loss_trained" not in res or res.get("train_status") == runs.STOPPED:
        raise EvalError(f"run {run.name!r} has no finished training (state: {m.get('state')}, stage: "
                        f"{m.get('stage')}); finish it first: hopscotch run --resume {run.name}")
    saved = trained_state(run)
    if saved is None:
        raise EvalError(f"run {run.name!r} has no trained scalars in {run.file(runs.SCALES_DIR)}")
    sel = list(m["selected"])
    out = [{"variant": "hopscotch-unscaled", "method": "hopscotch", "scaled": False, "attention": sel, "mlp": [],
            "scales": None},
           {"variant": "hopscotch", "method": "hopscotch", "scaled": True, "attention": sel, "mlp": [],
            "scales": saved["scales"], "channel_scales": saved.get("channel_scales"),
            "lora": split_state(saved, LORA_PREFIX)}]
    for name, entry in (read_json(run.file(runs.BASELINES_FILE), {}) or {}).items():
        if not entry.get("done"):
            continue
        base = {"method": name, "attention": list(entry["attention"]), "mlp": list(entry.get("mlp", []))}
        out.append({**base, "variant": f"{name}-unscaled", "scaled": False, "scales": None})
        saved = last_epoch_state(run.file(f"{runs.SCALES_DIR}-{name}"))
        if saved is not None and entry.get("eval_loss_trained") is not None:
            out.append({**base, "variant": name, "scaled": True, "scales": saved["scales"],
                        "channel_scales": saved.get("channel_scales"), "lora": split_state(saved, LORA_PREFIX)})
    return out


def handle_config(variant: dict) -> dict:
    """A variant of variants_of as the handle's configuration: `hs.applied(**handle_config(v))`."""
    return {"skipped": variant["attention"], "scales": variant["scales"], "skipped_mlp": variant["mlp"],
            "channel_scales": variant.get("channel_scales"), "lora": variant.get("lora")}


def _num_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def generation_values(texts: list[str], reference: list[str], gold: list[str | None]) -> dict[str, list]:
    """Per prompt, 1.0 / 0.0 for exact_match / answer_agreement against the original's texts and GSM8K accuracy
    against `gold`; None where the prompt does not count (no number in the original's answer, no gold answer)."""
    out: dict[str, list] = {f: [] for f in GENERATION_FIGURES}
    for t, r, g in zip(texts, reference, gold):
        out["exact_match"].append(float(t == r))
        ref = metrics.extract_flexible(r)
        out["answer_agreement"].append(None if ref is None else float(_num_equal(metrics.extract_flexible(t), ref)))
        want = metrics.extract_strict(g) if g else None
        out["gsm8k_strict"].append(None if want is None else float(_num_equal(metrics.extract_strict(t), want)))
        out["gsm8k_flexible"].append(None if want is None else float(_num_equal(metrics.extract_flexible(t), want)))
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def generation_scores(texts: list[str], reference: list[str], gold: list[str | None]) -> dict[str, float | None]:
    """exact_match / answer_agreement against the original's texts, GSM8K accuracy against `gold` answers."""
    return {f: _mean(v) for f, v in generation_values(texts, reference, gold).items()}


def prompt_hash(text: str) -> str:
    """A short fingerprint of a prompt (per_prompt["prompts"]): two evaluations pair only on the same prompts."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _kept(values: Sequence[float | None], tokens: Sequence[int] | None, *others: Sequence[float | None]):
    """Indices where the values (and the paired `others`) count: not None and, with `tokens`, a positive weight."""
    return [i for i, v in enumerate(values)
            if v is not None and all(o[i] is not None for o in others) and (tokens is None or tokens[i] > 0)]


def figure_ci(values: Sequence[float | None], tokens: Sequence[int] | None = None) -> list[float] | None:
    """[low, high] of the 95% interval of a figure from its per-prompt values (token-weighted with `tokens`)."""
    keep = _kept(values, tokens)
    if not keep:
        return None
    w = None if tokens is None else [tokens[i] for i in keep]
    low, high = stats.mean_ci([values[i] for i in keep], weights=w)
    return [low, high]


def paired_diff(a: Sequence[float | None], b: Sequence[float | None], tokens: Sequence[int] | None = None
                ) -> dict | None:
    """mean(a) - mean(b) over the prompts both count, with its 95% paired interval: {"diff", "ci", "excludes_zero",
    "prompts"}, or None when no prompt counts."""
    keep = _kept(a, tokens, b)
    if not keep:
        return None
    w = None if tokens is None else [tokens[i] for i in keep]
    diff, low, high = stats.paired_diff_ci([a[i] for i in keep], [b[i] for i in keep], weights=w)
    return {"diff": diff, "ci": [low, high], "excludes_zero": stats.excludes_zero((low, high)), "prompts": len(keep)}


def default_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    """The pairs `diffs` holds: every variant vs the original; each trained variant vs its unscaled skip set;
    hopscotch vs each baseline, trained vs trained and unscaled vs unscaled."""
    names = [r["variant"] for r in rows]
    pairs = [(n, "original") for n in names if n != "original"]
    pairs += [(r["variant"], f"{r['variant']}-unscaled") for r in rows
              if r.get("scaled") and f"{r['variant']}-unscaled" in names]
    for r in rows:
        if r.get("method") in ("hopscotch", "original"):
            continue
        for mine in ("hopscotch", "hopscotch-unscaled"):
            twin = next((x for x in rows if x.get("method") == "hopscotch" and x["variant"] == mine), None)
            if twin is not None and twin.get("scaled") == r.get("scaled"):
                pairs.append((mine, r["variant"]))
    return pairs


def _diff_rows(per: dict, a: str, b: str, per_b: dict | None = None,
               figures: Sequence[str] = FIGURES) -> list[dict]:
    other = per if per_b is None else per_b
    va, vb = per["variants"].get(a), other["variants"].get(b)
    if va is None or vb is None:
        missing = a if va is None else b
        raise EvalError(f"no per-prompt values for variant {missing!r} in eval.json")
    out = []
    for f in figures:
        if f not in va or f not in vb:
            continue
        tokens = None
        if f in TOKEN_FIGURES:
            if per_b is not None and list(per["tokens"]) != list(per_b["tokens"]):
                raise EvalError("the two evaluations teacher-force different answers (response tokens differ); "
                                "paired NLL/KL/agreement need the same answers")
            tokens = per["tokens"]
        d = paired_diff(va[f], vb[f], tokens)
        if d is not None:
            out.append({"a": a, "b": b, "metric": f, **d})
    return out


def _per_prompt(result: dict, where: str) -> dict:
    per = result.get("per_prompt") if isinstance(result, dict) else None
    if not isinstance(per, dict) or not isinstance(per.get("variants"), dict):
        raise EvalError(f"{where} has no per-prompt values (evaluated before they were kept); run `hopscotch eval` "
                        "again to get paired intervals")
    return per


def _eval_of(run) -> tuple[dict, str]:
    if isinstance(run, dict):
        return run, "this evaluation"
    folder = Path(getattr(run, "dir", run))
    res = read_json(folder / runs.EVAL_FILE)
    if not isinstance(res, dict):
        raise EvalError(f"{folder} has no eval.json; run `hopscotch eval --run {folder.name}` first")
    return res, str(folder / runs.EVAL_FILE)


def compare_variants(run, a: str, b: str, other=None, figures: Sequence[str] = FIGURES) -> list[dict]:
    """Paired 95% intervals of figure(a) - figure(b) over the held-out prompts, one dict per figure: {"a", "b",
    "metric", "diff", "ci": [low, high], "excludes_zero", "prompts"}.

    `run`: a Run, RunView, run directory or eval.json dict. `b` is a variant of `other` (another run evaluated on
    the same held-out prompts and answers) when given, else of `run`."""
    res, where = _eval_of(run)
    per = _per_prompt(res, where)
    per_b = None
    if other is not None:
        res_b, where_b = _eval_of(other)
        per_b = _per_prompt(res_b, where_b)
        if list(per.get("prompts") or []) != list(per_b.get("prompts") or []):
            raise EvalError(f"{where} and {where_b} were evaluated on different held-out prompts; a paired "
                            "difference needs the same prompts")
    return _diff_rows(per, a, b, per_b, figures)


def answer_text(tok, answer: data.Answer) -> str:
    """The text of a greedy answer as eval compares it: its response tokens decoded without special tokens."""
    return tok.decode(answer.response_ids, skip_special_tokens=True)


def reused_answers(run: Run, tok, held: list[data.Answer], prompts: list[str], max_new: int) -> dict[int, str] | None:
    """The original model's answer texts to the held-out `prompts` ({prompt index: text}) taken from the run's own
    greedy answers `held` (answers.jsonl, in prompt order), or None when generating them here could give others:
    another `max_new_tokens` than the run's, an answer missing, or prompt tokens that differ from this tokenizer's
    chat-template encoding of the prompt."""
    if max_new != int(run.manifest["settings"]["max_new_tokens"]) or len(held) != len(prompts):
        return None
    for a, p in zip(held, prompts):
        if list(a.prompt_ids) != list(data.encode_prompt(tok, p, True)):
            return None
    return {j: answer_text(tok, a) for j, a in enumerate(held)}


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
    split = read_json(run.file(runs.PROMPTS_FILE))
    answers = {a["index"]: data.Answer.from_json(a) for a in read_jsonl(run.file(runs.ANSWERS_FILE))}
    nc = len(split["calib"])
    held = [answers[i] for i in sorted(answers) if i >= nc]
    if len(held) != len(split["eval"]):
        raise EvalError(f"run {run.name!r} lacks held-out answers ({len(held)} of {len(split['eval'])})")
    if [a.index for a in held] != list(range(nc, nc + len(held))):
        raise EvalError(f"run {run.name!r}: its held-out answers do not match its held-out prompts")
    rows = data.pack(data.build_examples(held), s["batch_tokens"])
    with_tokens = [j for j, a in enumerate(held) if a.response_ids]  # example e -> held-out prompt with_tokens[e]
    prompts = [r["prompt"] for r in split["eval"]]
    gold = [r.get("answer") for r in split["eval"]]

    def progress(step: int, total: int, info: dict) -> None:
        if on_progress is not None:
            on_progress(step, total, info)

    stopped = should_stop or (lambda: False)
    out_rows: list[dict] = []
    with attach(model) as hs:
        progress(0, 1, {"stage": "eval: teacher-forced"})
        cfg = {v["variant"]: handle_config(v) for v in variants}
        tf = metrics.compare(hs, rows, cfg, per_example=True, mmd_tokens=MMD_TOKENS if mmd else None,
                             mmd_seed=MMD_SEED)
        layer_mmd = {name: tf[name]["layer_mmd"] for name in cfg} if mmd else {}
        texts: dict[str, list[str]] = {}
        if generate:
            path = run.file(runs.EVAL_ANSWERS_FILE)
            have = [r for r in read_jsonl(path) if r.get("max_new_tokens") == max_new]
            names = ["original", *cfg]
            for j, name in enumerate(names):
                if stopped():
                    break
                done = {r["index"]: r["text"] for r in have if r["variant"] == name}
                v = cfg.get(name, {})
                reused = reused_answers(run, tok, held, prompts, max_new) if name == "original" else None
                if reused is not None:
                    new_texts = {i: t for i, t in reused.items() if i not in done}
                    append_jsonl(path, [{"variant": name, "max_new_tokens": max_new, "index": i, "text": t,
                                         "reused": True} for i, t in sorted(new_texts.items())])
                    done.update(new_texts)

                def save(b: list[data.Answer], name=name) -> None:
                    append_jsonl(path, [{"variant": name, "max_new_tokens": max_new, "index": a.index,
                                         "text": answer_text(tok, a)} for a in b])

                base = j * len(prompts) + len(done)  # progress counts prompts answered, over all variants

                def prog(step: int, total: int, info: dict, base=base, name=name) -> None:
                    progress(base + step, len(names) * len(prompts), {"stage": "eval: generate", "variant": name})

                if len(done) < len(prompts):
                    with hs.applied(**v):
                        new = data.generate_answers(model, tok, prompts, max_new, batch, skip=done, on_batch=save,
                                                    on_progress=prog, should_stop=stopped)
                    done.update({a.index: answer_text(tok, a) for a in new})
                if len(done) == len(prompts):
                    texts[name] = [done[i] for i in range(len(prompts))]
    if stopped():
        return {"status": runs.STOPPED}
    ref = texts.get("original")
    n = len(prompts)

    def by_prompt(values: list) -> list:  # per example (data.pack order) -> per held-out prompt
        out: list = [None] * n
        for e, j in enumerate(with_tokens):
            out[j] = values[e]
        return out

    tokens = [0] * n
    for e, j in enumerate(with_tokens):
        tokens[j] = tf["original"]["examples"]["tokens"][e]
    per: dict[str, dict[str, list]] = {}
    for name in ["original", *cfg]:
        ex = tf[name]["examples"]
        vals = {"nll": by_prompt(ex["nll"])}
        vals["kl"] = by_prompt(ex["kl"]) if name != "original" else [0.0 if t else None for t in tokens]
        vals["agreement"] = by_prompt(ex["agreement"]) if name != "original" else [1.0 if t else None
                                                                                  for t in tokens]
        if ref is not None and name in texts:
            vals.update(generation_values(texts[name], ref, gold))
        per[name] = vals

    def figures_of(name: str) -> dict:
        vals = per[name]
        out = {}
        for f in GENERATION_FIGURES:
            out[f] = _mean(vals[f]) if f in vals else None
        for f in FIGURES:
            ci = figure_ci(vals[f], tokens if f in TOKEN_FIGURES else None) if f in vals else None
            out[f"{f}_ci"] = ci
            out[f"{f}_ci_low"], out[f"{f}_ci_high"] = ci if ci is not None else (None, None)
        return out

    out_rows.append({"variant": "original", "method": "original", "scaled": False, "k": 0, "attention": [],
                     "mlp": [], "nll": tf["original"]["nll"], "ppl": tf["original"]["ppl"], "kl": 0.0,
                     "agreement": 1.0, **figures_of("original")})
    for v in variants:
        name = v["variant"]
        out_rows.append({"variant": name, "method": v["method"], "scaled": v["scaled"], "k": len(v["attention"]),
                         "attention": v["attention"], "mlp": v["mlp"], "nll": tf[name]["nll"],
                         "ppl": tf[name]["ppl"], "kl": tf[name]["kl"], "agreement": tf[name]["agreement"],
                         **figures_of(name)})
    per_prompt = {"prompts": [prompt_hash(p) for p in prompts], "tokens": tokens, "variants": per}
    diffs = [d for a, b in default_pairs(out_rows) for d in _diff_rows(per_prompt, a, b)]
    json_rows = [{k: x for k, x in r.items() if not k.endswith(("_ci_low", "_ci_high"))} for r in out_rows]
    result = {"format_version": 1, "run": run.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "prompts": len(prompts), "tokens": tf["original"]["tokens"], "max_new_tokens": max_new,
              "confidence": stats.CONFIDENCE, "rows": json_rows, "diffs": diffs, "per_prompt": per_prompt,
              "layer_mmd": layer_mmd, "status": runs.DONE}
    write_json(run.file(runs.EVAL_FILE), result)
    write_csv(run.file(runs.EVAL_CSV), out_rows, COLUMNS)
    return result


def with_ci(x: float | None, ci: Sequence[float] | None, spec: str = ".3f") -> str:
    """`0.460 [0.412, 0.511]`, or the value alone when there is no interval, or `-` when there is no value."""
    if x is None:
        return "-"
    if not ci or len(ci) != 2 or any(c is None for c in ci):
        return format(x, spec)
    return f"{x:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]"


SHORT = {"nll": "NLL", "kl": "KL", "agreement": "top1", "exact_match": "EM", "answer_agreement": "ans",
         "gsm8k_strict": "strict", "gsm8k_flexible": "flex"}


def format_table(result: dict) -> str:
    """eval.json as a plain-text table: each figure with its 95% interval [low, high] when eval.json has one,
    then the paired differences (`diffs`), * where the interval excludes 0."""
    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    cols = (("nll", ".3f", 22), ("kl", ".3f", 22), ("agreement", ".3f", 22), ("exact_match", ".2f", 18),
            ("answer_agreement", ".2f", 18), ("gsm8k_flexible", ".2f", 18), ("gsm8k_strict", ".2f", 18))
    head = f"{'variant':<22}{'blocks':<22}" + "".join(f"{SHORT[c]:>{w}}" for c, _, w in cols)
    lines = [head]
    for r in result["rows"]:
        blocks = " ".join(map(str, r["attention"])) + (" +MLP" if r["mlp"] else "")
        lines.append(f"{r['variant']:<22}{blocks:<22}"
                     + "".join(f"{with_ci(r.get(c), r.get(c + '_ci'), spec):>{w}}" for c, spec, w in cols))
    diffs = result.get("diffs") or []
    if diffs:
        pct = int(100 * result.get("confidence", 0.95))
        lines += ["", f"paired differences a - b over the same prompts, {pct}% interval; * = excludes 0"]
        pairs = list(dict.fromkeys((d["a"], d["b"]) for d in diffs))
        for a, b in pairs:
            cells = [f"{SHORT[d['metric']]} {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                     + ("*" if d["excludes_zero"] else " ")
                     for d in diffs if (d["a"], d["b"]) == (a, b)
                     and d["metric"] in ("nll", "kl", "agreement", "answer_agreement")]
            lines.append(f"{a + ' - ' + b:<44}" + "  ".join(cells))
    return "\n".join(lines)
