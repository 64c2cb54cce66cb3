"""hopscotch eval / hopscotch bench on a finished tiny run: numbers agree with their definitions and the run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers.models import make_model, make_tokenizer

from hopscotch_core import cli

from hopscotch_core.measure import evaluation, metrics

from hopscotch_core.method import pipeline
from hopscotch_core.method.runs import RunStore, read_jsonl
from hopscotch_core.engine.scaling import attach


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (given skip set, two trained baselines) on a saved tiny qwen2, with its data file."""
    root = tmp_path_factory.mktemp("evalrun")
    model = make_model("qwen2", num_hidden_layers=5)
    model.save_pretrained(root / "m")
    make_tokenizer().save_pretrained(root / "m")
    data = root / "prompts.jsonl"
    with data.open("w") as f:
        for i in range(18):
            f.write(json.dumps({"question": f"what is {i} plus {i + 3}?", "answer": f"so #### {2 * i + 3}"}) + "\n")
    s = pipeline.RunSettings(model=str(root / "m"), data=str(data), n_calib=10, n_eval=6, max_new_tokens=12,
                             gen_batch=4, blocks=[1, 3], epochs=1, baselines=["attn-bi", "shortgpt"], device="cpu")
    pipeline.run_pipeline(s, root / "runs", "r")
    return root


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
    # the original regenerated in eval equals the run's own answers (same greedy decoding)
    tok = make_tokenizer()
    held = sorted((a for a in read_jsonl(run.file("answers.jsonl")) if a["index"] >= 10), key=lambda a: a["index"])
    gen = read_jsonl(run.file("eval-answers.jsonl"))
    texts = {v: [g["text"] for g in sorted((g for g in gen if g["variant"] == v), key=lambda g: g["index"])]
             for v in rows}
    assert texts["original"] == [tok.decode(a["response_ids"], skip_special_tokens=True) for a in held]
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
    assert [(r["variant"], r["k"], r["context"]) for r in res["rows"]] == [
        (v, k, c) for c in (8, 16) for v, k in (("original", 0), ("skipped", 2), ("compact", 2),
                                                 ("skipped", 1), ("compact", 1))]
    assert res["rows"][1]["blocks"] == [1, 3] and res["rows"][3]["blocks"] == [1]
    assert res["rows"][2]["kv_cache_bytes"] * 5 == res["rows"][0]["kv_cache_bytes"] * 3
    with (runs / "r" / "bench.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 10
    assert "compact" in capsys.readouterr().out
    assert cli.main(["bench", "--model", str(finished / "m"), "--contexts", "8"]) == 2
    assert "--skip" in capsys.readouterr().err
    assert torch.get_num_threads() >= 1
