"""hopscotch eval / hopscotch bench on a finished tiny run: numbers agree with their definitions and the run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers.models import make_model, make_tokenizer
from helpers.runs import finished_run

from hopscotch_core import cli

from hopscotch_core.measure import evaluation, metrics

from hopscotch_core.method import pipeline
from hopscotch_core.method.runs import RunStore, read_jsonl
from hopscotch_core.engine.scaling import attach


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (given skip set, two trained baselines, rank-2 deltas) on a saved tiny qwen2, with its data file."""
    return finished_run(tmp_path_factory.mktemp("evalrun"))


def test_eval_rows_match_the_run_and_their_definitions(finished, capsys):
    runs = finished / "runs"
    assert cli.main(["eval", "--run", "r", "--runs-dir", str(runs)]) == 0
    assert "hopscotch-unscaled" in capsys.readouterr().out
    run = RunStore(runs).open("r")
    res = json.loads(run.file("eval.json").read_text())
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == ["original", "hopscotch-unscaled", "hopscotch", "attn-bi-unscaled", "attn-bi",
                          "shortgpt-unscaled", "shortgpt"]
    m = run.manifest["results"]
    # teacher-forced numbers equal what the pipeline measured on the same held-out answers
    assert rows["original"]["nll"] == pytest.approx(m["eval_loss_original"], rel=1e-5)
    assert rows["hopscotch-unscaled"]["nll"] == pytest.approx(m["eval_loss_unscaled"], rel=1e-5)
    assert rows["hopscotch"]["nll"] == pytest.approx(m["eval_loss_trained"], rel=1e-5)
    assert rows["hopscotch"]["kl"] == pytest.approx(m["eval_kl_trained"], rel=1e-5)
    base = json.loads(run.file("baselines.json").read_text())
    assert rows["shortgpt"]["nll"] == pytest.approx(base["shortgpt"]["eval_loss_trained"], rel=1e-5)
    assert rows["shortgpt"]["mlp"] == base["shortgpt"]["mlp"] != []
    assert rows["original"]["kl"] == 0.0 and rows["original"]["agreement"] == 1.0
    for r in res["rows"][1:]:
        assert r["kl"] >= 0 and 0 <= r["agreement"] <= 1 and r["k"] == 2
    # the original's texts are the run's own answers, decoded (taken from answers.jsonl, not generated again)
    tok = make_tokenizer()
    held = sorted((a for a in read_jsonl(run.file("answers.jsonl")) if a["index"] >= 10), key=lambda a: a["index"])
    gen = read_jsonl(run.file("eval-answers.jsonl"))
    texts = {v: [g["text"] for g in sorted((g for g in gen if g["variant"] == v), key=lambda g: g["index"])]
             for v in rows}
    assert texts["original"] == [tok.decode(a["response_ids"], skip_special_tokens=True) for a in held]
    assert all(g.get("reused") for g in gen if g["variant"] == "original")
    assert rows["original"]["exact_match"] == 1.0
    # generation metrics recomputed by hand from the stored texts
    gold = [r["answer"] for r in json.loads(run.file("prompts.json").read_text())["eval"]]
    for v, r in rows.items():
        em = sum(a == b for a, b in zip(texts[v], texts["original"])) / 6
        assert r["exact_match"] == pytest.approx(em)
        flex = sum(metrics.extract_flexible(t) == metrics.extract_strict(g) for t, g in zip(texts[v], gold)) / 6
        assert r["gsm8k_flexible"] == pytest.approx(flex)
    # layer MMD per variant and layer. Before the first skipped block the hidden states are identical, where the
    # unbiased estimate is S / (n^2 (n - 1)) - 1 / n <= 0 (S: sum of off-diagonal kernel values)
    mmd = res["layer_mmd"]
    assert set(mmd) == set(rows) - {"original"} and all(len(v) == 5 for v in mmd.values())
    assert -0.05 < mmd["hopscotch-unscaled"][0] <= 0
    assert mmd["hopscotch-unscaled"][1] > 1e-3
    with run.file("eval.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["variant"] for t in table] == list(rows) and table[2]["attention"] == "1 3"
    assert float(table[2]["nll"]) == pytest.approx(rows["hopscotch"]["nll"])


def test_the_original_answers_are_reused_and_equal_to_generated_ones(finished, tmp_path, monkeypatch):
    """With the run's max_new_tokens, eval takes the original's texts from answers.jsonl: the same texts greedy
    generation gives here; with another length it generates them. Its layer MMD (from the teacher-forced passes)
    equals metrics.layer_mmd's on the same rows."""
    import shutil

    from hopscotch_core.engine.loading import load_model
    from hopscotch_core.method import data

    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    run = RunStore(runs).open("r")
    for f in ("eval-answers.jsonl", "eval.json"):
        run.file(f).unlink(missing_ok=True)
    s = run.manifest["settings"]
    model, tok = load_model(str(finished / "m"), device="cpu")  # as `hopscotch eval` loads them
    prompts = [r["prompt"] for r in json.loads(run.file("prompts.json").read_text())["eval"]]
    held = sorted((data.Answer.from_json(a) for a in read_jsonl(run.file("answers.jsonl")) if a["index"] >= 10),
                  key=lambda a: a.index)
    reused = evaluation.reused_answers(run, tok, held, prompts, s["max_new_tokens"])
    generated = data.generate_answers(model, tok, prompts, s["max_new_tokens"], s["gen_batch"])
    assert [evaluation.answer_text(tok, a) for a in generated] == [reused[j] for j in range(len(prompts))]
    assert any(reused.values())
    assert evaluation.reused_answers(run, tok, held, prompts, s["max_new_tokens"] + 1) is None
    assert evaluation.reused_answers(run, tok, held, ["another prompt", *prompts[1:]], s["max_new_tokens"]) is None

    calls = []
    real = data.generate_answers
    monkeypatch.setattr(data, "generate_answers", lambda *a, **k: calls.append(k["skip"]) or real(*a, **k))
    res = evaluation.evaluate_run(run, model, tok)
    n_variants = len(res["rows"]) - 1
    assert len(calls) == n_variants  # none for the original
    stored = [g for g in read_jsonl(run.file("eval-answers.jsonl")) if g["variant"] == "original"]
    assert [g["text"] for g in sorted(stored, key=lambda g: g["index"])] == [reused[j] for j in range(len(prompts))]
    assert all(g.get("reused") for g in stored)
    assert res["rows"][0]["exact_match"] == 1.0
    calls.clear()
    again = evaluation.evaluate_run(run, model, tok)  # everything stored: nothing generated, the same figures
    assert calls == [] and again["rows"] == res["rows"]
    shorter = evaluation.evaluate_run(run, model, tok, max_new_tokens=s["max_new_tokens"] - 4)
    assert len(calls) == n_variants + 1 and shorter["max_new_tokens"] == s["max_new_tokens"] - 4

    rows = data.pack(data.build_examples(held), s["batch_tokens"])
    with attach(model) as hs:
        for v in evaluation.variants_of(run):
            want = metrics.layer_mmd(hs, rows, **evaluation.handle_config(v))
            scale = max(abs(w) for w in want)
            assert res["layer_mmd"][v["variant"]] == pytest.approx(want, rel=0, abs=1e-4 * scale)


def test_eval_resumes_from_stored_generations(finished, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    run = RunStore(runs).open("r")
    ref = json.loads(run.file("eval.json").read_text()) if run.file("eval.json").exists() else None
    if ref is None:
        assert cli.main(["eval", "--run", "r", "--runs-dir", str(runs)]) == 0
        ref = json.loads(run.file("eval.json").read_text())
    lines = run.file("eval-answers.jsonl").read_text().splitlines()
    run.file("eval-answers.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[len(lines) // 2][:9])
    run.file("eval.json").unlink()
    assert cli.main(["eval", "--run", "r", "--runs-dir", str(runs)]) == 0
    got = json.loads(run.file("eval.json").read_text())
    strip = lambda res: [{k: v for k, v in r.items()} for r in res["rows"]]
    assert strip(got) == strip(ref)


def test_generation_scores_known_answers():
    texts = ["It is 12.", "so 7 apples #### 7", "no idea", "The answer is 1,000."]
    ref = ["It is 12.", "so 8 apples", "maybe 3", "The answer is 1000"]
    gold = ["#### 12", "#### 7", "#### 3", None]
    s = evaluation.generation_scores(texts, ref, gold)
    assert s["exact_match"] == 0.25
    assert s["answer_agreement"] == pytest.approx(2 / 4)  # 12 == 12, 7 != 8, none != 3, 1000 == 1000
    assert s["gsm8k_flexible"] == pytest.approx(2 / 3)   # 12 and 7 right, "no idea" wrong; no gold for the 4th
    assert s["gsm8k_strict"] == pytest.approx(1 / 3)     # only "#### 7" is in the strict format


def test_eval_refuses_unfinished_runs_and_unknown_tasks(finished, tmp_path, capsys):
    s = pipeline.RunSettings(model=str(finished / "m"), data=str(finished / "prompts.jsonl"), n_calib=10,
                             n_eval=6, max_new_tokens=12, gen_batch=4, blocks=[1], epochs=1, device="cpu")
    pipeline.run_pipeline(s, tmp_path / "runs", "half", stages=pipeline.STAGES[:3])
    assert cli.main(["eval", "--run", "half", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "no finished training" in capsys.readouterr().err
    assert cli.main(["eval", "--run", "r", "--runs-dir", str(finished / "runs"), "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err
    assert "unknown task" in err and "fidelity" in err
    assert cli.main(["eval", "--run", "nope", "--runs-dir", str(finished / "runs")]) == 2


def test_layer_mmd_bad_input():
    model = make_model("llama")
    hs = attach(model)
    from hopscotch_core.method import data

    rows = data.pack(data.build_examples([data.Answer(0, [5, 6], [7], True)]), 64)
    with pytest.raises(metrics.MetricError, match="out of range"):
        metrics.layer_mmd(hs, rows, [1], layers=[0, 9])
    with pytest.raises(metrics.MetricError, match="at least 4 tokens"):
        metrics.layer_mmd(hs, rows, [1])
    hs.detach()


def test_bench_writes_into_the_run(finished, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    assert cli.main(["bench", "--run", "r", "--runs-dir", str(runs), "--contexts", "8,16", "--decode-tokens", "2",
                     "--rounds", "1", "--also-k", "1"]) == 0
    res = json.loads((runs / "r" / "bench.json").read_text())
    # the deci export's model is timed too: this qwen2 model and skip set are what that layout holds
    assert [(r["variant"], r["k"], r["context"]) for r in res["rows"]] == [
        (v, k, c) for c in (8, 16) for v, k in (("original", 0), ("skipped", 2), ("compact", 2), ("deci", 2),
                                                 ("skipped", 1), ("compact", 1), ("deci", 1))]
    assert res["rows"][1]["blocks"] == [1, 3] and res["rows"][4]["blocks"] == [1]
    assert res["rows"][2]["kv_cache_bytes"] * 5 == res["rows"][0]["kv_cache_bytes"] * 3
    assert res["rows"][3]["kv_cache_bytes"] == res["rows"][2]["kv_cache_bytes"]
    with (runs / "r" / "bench.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 14
    assert "compact" in capsys.readouterr().out
    assert cli.main(["bench", "--model", str(finished / "m"), "--contexts", "8"]) == 2
    assert "--skip" in capsys.readouterr().err
    assert torch.get_num_threads() >= 1


# ------------------------------------------------------------------------------------------------ intervals
def _evaluated(finished, tmp_path):
    """A copy of the finished run with eval.json written by this code."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    assert cli.main(["eval", "--run", "r", "--runs-dir", str(runs)]) == 0
    run = RunStore(runs).open("r")
    return run, json.loads(run.file("eval.json").read_text())


def _reference_per_prompt(finished, run):
    """Per held-out prompt and variant, the token means of NLL, KL(original || variant) and top-1 agreement from
    one plain forward of that prompt + answer alone (no packing), and its response tokens."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(finished / "m", dtype=torch.float32).eval()
    held = sorted((a for a in read_jsonl(run.file("answers.jsonl")) if a["index"] >= 10), key=lambda a: a["index"])
    variants = evaluation.variants_of(run)
    out = {v["variant"]: {"nll": [], "kl": [], "agreement": []} for v in variants}
    out["original"] = {"nll": []}
    tokens = []
    hs = attach(model)

    def logprobs(ids, n_resp):
        with torch.no_grad():
            lg = model(input_ids=torch.tensor([ids])).logits[0, -n_resp - 1:-1].float()
        return torch.log_softmax(lg, -1)  # (n_resp, V): the positions predicting the response

    for a in held:
        ids, resp = a["prompt_ids"] + a["response_ids"], a["response_ids"]
        tokens.append(len(resp))
        tgt = torch.tensor(resp)
        lpo = logprobs(ids, len(resp))
        out["original"]["nll"].append(float(-lpo[torch.arange(len(resp)), tgt].mean()))
        for v in variants:
            with hs.applied(v["attention"], v["scales"], v["mlp"], v.get("channel_scales"), v.get("lora")):
                lpm = logprobs(ids, len(resp))
            o = out[v["variant"]]
            o["nll"].append(float(-lpm[torch.arange(len(resp)), tgt].mean()))
            o["kl"].append(float((lpo.exp() * (lpo - lpm)).sum(-1).mean()))
            o["agreement"].append(float((lpo.argmax(-1) == lpm.argmax(-1)).float().mean()))
    hs.detach()
    return out, tokens


def _loop_interval(a, w, b=None, n=4000, seed=1):
    """Reference bootstrap written here: resample prompts, the weighted mean (of a - b when paired) per resample,
    its 2.5 / 97.5 percentiles."""
    import numpy as np

    a, w = np.asarray(a), np.asarray(w, dtype=float)
    b = np.zeros_like(a) if b is None else np.asarray(b)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    stat = ((a[idx] - b[idx]) * w[idx]).sum(1) / w[idx].sum(1)
    return np.percentile(stat, [2.5, 97.5])


def test_every_figure_has_an_interval_from_per_prompt_values(finished, tmp_path):
    import numpy as np

    from hopscotch_core.measure import stats

    run, res = _evaluated(finished, tmp_path)
    ref, tokens = _reference_per_prompt(finished, run)
    per = res["per_prompt"]
    assert per["tokens"] == tokens and len(per["prompts"]) == res["prompts"] == 6
    rows = {r["variant"]: r for r in res["rows"]}
    for name, figs in ref.items():
        for fig, values in figs.items():
            got = per["variants"][name][fig]
            assert got == pytest.approx(values, rel=1e-4, abs=1e-5), (name, fig)
            # the figure is the token-weighted mean of its per-prompt values
            assert rows[name][fig] == pytest.approx(np.average(values, weights=tokens), rel=1e-4, abs=1e-6)
            low, high = rows[name][f"{fig}_ci"]
            assert low <= rows[name][fig] <= high
            # the interval is the bootstrap of the stored per-prompt values (which equal the reference's above; for
            # the discrete agreement, float noise between the packed and the plain forward can move BCa's bounds)
            assert [low, high] == pytest.approx(list(stats.mean_ci(got, weights=tokens)), rel=1e-3, abs=1e-5)
            if fig != "agreement":  # continuous values: close to a plain resampling loop (BCa vs percentile)
                lo_ref, hi_ref = _loop_interval(values, tokens)
                assert abs(low - lo_ref) < 0.3 * (hi_ref - lo_ref) and abs(high - hi_ref) < 0.3 * (hi_ref - lo_ref)
    assert rows["original"]["kl_ci"] == [0.0, 0.0] and rows["original"]["agreement_ci"] == [1.0, 1.0]
    assert rows["hopscotch-unscaled"]["nll_ci"][1] > rows["hopscotch-unscaled"]["nll_ci"][0]
    # answer-level figures: 0/1 per prompt recomputed from the stored generations
    gen = read_jsonl(run.file("eval-answers.jsonl"))
    texts = {v: [g["text"] for g in sorted((g for g in gen if g["variant"] == v), key=lambda g: g["index"])]
             for v in rows}
    gold = [r["answer"] for r in json.loads(run.file("prompts.json").read_text())["eval"]]
    for name in rows:
        em = [float(t == o) for t, o in zip(texts[name], texts["original"])]
        assert per["variants"][name]["exact_match"] == em
        assert rows[name]["exact_match_ci"] == pytest.approx(list(stats.mean_ci(em)))
        flex = [float(metrics.extract_flexible(t) == metrics.extract_strict(g)) for t, g in zip(texts[name], gold)]
        assert per["variants"][name]["gsm8k_flexible"] == flex
        assert rows[name]["gsm8k_flexible_ci"] == pytest.approx(list(stats.mean_ci(flex)))
    # eval.csv carries the bounds
    with run.file("eval.csv").open() as f:
        table = {t["variant"]: t for t in csv.DictReader(f)}
    for name, r in rows.items():
        for fig in ("nll", "kl", "agreement", "exact_match"):
            assert float(table[name][f"{fig}_ci_low"]) == pytest.approx(r[f"{fig}_ci"][0])
            assert float(table[name][f"{fig}_ci_high"]) == pytest.approx(r[f"{fig}_ci"][1])
    text = evaluation.format_table(res)
    lo, hi = rows["hopscotch"]["nll_ci"]
    assert f"{rows['hopscotch']['nll']:.3f} [{lo:.3f}, {hi:.3f}]" in text and "excludes 0" in text


def test_paired_differences_between_any_two_variants(finished, tmp_path):
    import shutil

    import numpy as np

    run, res = _evaluated(finished, tmp_path)
    ref, tokens = _reference_per_prompt(finished, run)
    diffs = {(d["a"], d["b"], d["metric"]): d for d in res["diffs"]}
    # the default pairs: vs the original, trained vs unscaled of each skip set, hopscotch vs each baseline
    for key in [("hopscotch", "original", "nll"), ("hopscotch", "hopscotch-unscaled", "kl"),
                ("shortgpt", "shortgpt-unscaled", "agreement"), ("hopscotch", "attn-bi", "nll"),
                ("hopscotch-unscaled", "shortgpt-unscaled", "kl"), ("hopscotch", "original", "exact_match")]:
        assert key in diffs, key
    d = diffs[("hopscotch", "hopscotch-unscaled", "nll")]
    a, b = ref["hopscotch"]["nll"], ref["hopscotch-unscaled"]["nll"]
    want = np.average(a, weights=tokens) - np.average(b, weights=tokens)
    assert d["diff"] == pytest.approx(want, rel=1e-3, abs=1e-6) and d["prompts"] == 6
    low, high = d["ci"]
    assert low <= d["diff"] <= high and d["excludes_zero"] == (low > 0 or high < 0)
    lo_ref, hi_ref = _loop_interval(a, tokens, b)
    assert abs(low - lo_ref) < 0.3 * (hi_ref - lo_ref) and abs(high - hi_ref) < 0.3 * (hi_ref - lo_ref)
    # any pair, also one not in `diffs`, from the run directory
    got = {c["metric"]: c for c in evaluation.compare_variants(run, "shortgpt", "attn-bi-unscaled")}
    assert set(got) >= {"nll", "kl", "agreement", "exact_match"}
    want = np.average(ref["shortgpt"]["kl"], weights=tokens) - np.average(ref["attn-bi-unscaled"]["kl"],
                                                                          weights=tokens)
    assert got["kl"]["diff"] == pytest.approx(want, rel=1e-3, abs=1e-6)
    same = evaluation.compare_variants(run, "hopscotch", "hopscotch")
    assert all(c["diff"] == 0 and c["ci"] == [0.0, 0.0] and not c["excludes_zero"] for c in same)
    # across two runs evaluated on the same prompts and answers
    other = tmp_path / "other"
    shutil.copytree(run.dir, other)
    cross = {c["metric"]: c for c in evaluation.compare_variants(run.dir, "hopscotch", "hopscotch", other=other)}
    assert cross["nll"]["diff"] == 0
    bad = json.loads((other / "eval.json").read_text())
    bad["per_prompt"]["prompts"][0] = "something-else"
    with pytest.raises(evaluation.EvalError, match="different held-out prompts"):
        evaluation.compare_variants(run, "hopscotch", "hopscotch", other=bad)
    with pytest.raises(evaluation.EvalError, match="no per-prompt values for variant 'nope'"):
        evaluation.compare_variants(run, "hopscotch", "nope")
    old = {k: v for k, v in res.items() if k not in ("per_prompt", "diffs")}
    with pytest.raises(evaluation.EvalError, match="no per-prompt values"):
        evaluation.compare_variants(old, "hopscotch", "original")


def test_old_eval_files_without_intervals_still_read(finished, tmp_path):
    """eval.json written before the intervals (no _ci, per_prompt, diffs): the table and the readers show plain
    values."""
    from hopscotch_core.studio.runview import RunView

    run, res = _evaluated(finished, tmp_path)
    old = {k: v for k, v in res.items() if k not in ("per_prompt", "diffs", "confidence")}
    old["rows"] = [{k: v for k, v in r.items() if not k.endswith("_ci")} for r in res["rows"]]
    text = evaluation.format_table(old)
    assert f"{old['rows'][2]['nll']:.3f}" in text and "[" not in text
    run.file("eval.json").write_text(json.dumps(old))
    fid = RunView(run.dir).fidelity()
    assert list(fid["variant"])[:3] == ["original", "hopscotch-unscaled", "hopscotch"]
    assert RunView(run.dir).eval_diffs() == []
    from hopscotch_core.studio.report import build_report

    html = build_report(run.dir)  # the report of such a run: values without intervals, no differences table
    assert "Fidelity to the original model" in html and "excludes 0" not in html


def test_fidelity_only_eval_has_teacher_forced_intervals_only(finished, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    assert cli.main(["eval", "--run", "r", "--runs-dir", str(runs), "--tasks", "fidelity"]) == 0
    res = json.loads((runs / "r" / "eval.json").read_text())
    for r in res["rows"]:
        assert r["nll_ci"][0] <= r["nll"] <= r["nll_ci"][1]
        assert r["exact_match"] is None and r["exact_match_ci"] is None and r["gsm8k_flexible_ci"] is None
    assert {d["metric"] for d in res["diffs"]} == {"nll", "kl", "agreement"}


def test_the_trained_variant_is_the_runs_adapter_even_when_epoch_files_were_trimmed(finished, tmp_path):
    """The bundled example runs keep only the scalars in their epoch files; the deltas live in the adapter. The
    trained variant that eval and the benchmarks score must be the adapter (what exports fold), deltas included."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(finished / "runs" / "r", tmp_path / "runs" / "r")
    run = RunStore(tmp_path / "runs").open("r")
    adapter = load_file(str(run.file("adapter") / "scales.safetensors"))
    deltas = {k: v for k, v in adapter.items() if k.startswith("lora.")}
    assert deltas and any(float(v.abs().max()) > 0 for k, v in deltas.items() if k.endswith(".B"))
    for f in sorted(run.file("scales").glob("epoch_*.safetensors")):
        save_file({k: v for k, v in load_file(str(f)).items() if k in ("scales", "channel_scales")}, str(f))
    trained = next(v for v in evaluation.variants_of(run) if v["variant"] == "hopscotch")
    assert set(trained["lora"]) == {k.removeprefix("lora.") for k in deltas}
    for k, v in deltas.items():
        assert torch.equal(trained["lora"][k.removeprefix("lora.")], v)
    assert torch.equal(trained["scales"], adapter["scales"])
