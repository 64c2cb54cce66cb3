"""Answers kept (measure/answers.py): the probe's questions and answers, the reply parser, the shares and their
intervals, a run's answers-kept.json through the CLI, resume."""

from __future__ import annotations

import json
import re

import pytest
from helpers.runs import finished_run

from hopscotch_core import cli
from hopscotch_core.measure import answers
from hopscotch_core.method.runs import RunStore, read_jsonl


def _solve(question: str) -> int:
    """An independent reading of a probe question: its two numbers and the operation its words name."""
    a, b = map(int, re.findall(r"\d+", question)[:2])
    if "+" in question or "gets" in question:
        return a + b
    if " - " in question or "gives away" in question:
        return a - b
    if "*" in question or "in each box" in question:
        return a * b
    assert "/" in question or "equally" in question, question
    return a // b


def test_probe_is_fixed_by_its_seed_and_its_answers_are_right():
    qs = answers.probe(200, seed=0)
    assert qs == answers.probe(200, seed=0) and qs != answers.probe(200, seed=1)
    assert len({q["question"] for q in qs}) > 190
    for q in qs:
        assert int(q["answer"]) == _solve(q["question"]) > 0, q
    words = sum("has" in q["question"] or "shares" in q["question"] for q in qs)
    assert 90 <= words <= 110  # half word problems
    with pytest.raises(answers.AnswersError):
        answers.probe(0)


@pytest.mark.parametrize("text,want", [
    ("63 - 4 = 59.", "59"),
    ("Kofi has 28 shells, so 28 + 72 = 100 shells.\nKofi now has 100 - 100 = 0", "100"),
    ("4 * 7 = 28\n\nIn this scenario, I used the number 4", "28"),
    ("The answer is 12.\n\nIt is 3 times 4", "12"),
    ("no number here", None),
])
def test_final_number_reads_the_first_equation_else_the_last_number_before_a_blank_line(text, want):
    assert answers.final_number(text) == want


def test_shares_are_accuracy_and_the_kept_share_of_the_originals_right_answers():
    right = {"original": [1.0, 1.0, 0.0, 1.0, 0.0, 1.0], "v": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]}
    s = answers.shares(right)
    assert s["original"]["acc"] == pytest.approx(4 / 6) and s["original"]["kept"] == 1.0
    assert s["v"]["acc"] == pytest.approx(3 / 6)
    assert s["v"]["kept_of"] == 4 and s["v"]["kept"] == pytest.approx(2 / 4)  # right on 2 of the original's 4
    low, high = s["v"]["kept_ci"]
    assert 0 <= low <= 0.5 <= high <= 1
    assert answers.shares({"original": [0.0, 0.0], "v": [1.0, 0.0]})["v"]["kept"] is None


def test_gsm8k_shares_come_from_eval_json_per_prompt_values():
    ev = {"per_prompt": {"variants": {"original": {"gsm8k_flexible": [1.0, 0.0, None, 1.0]},
                                      "hopscotch": {"gsm8k_flexible": [0.0, 1.0, None, 1.0]}}}}
    got = answers.gsm8k_shares(ev)
    assert got["questions"] == 3
    assert got["variants"]["hopscotch"]["kept"] == pytest.approx(0.5)
    assert got["variants"]["hopscotch"]["acc"] == pytest.approx(2 / 3)
    assert answers.gsm8k_shares({"per_prompt": {"variants": {"original": {"nll": [1.0]}}}}) is None


def test_eval_answers_writes_answers_kept_json_and_resumes(tmp_path, capsys, monkeypatch):
    root = finished_run(tmp_path)
    runs = str(root / "runs")
    args = ["eval", "--run", "r", "--runs-dir", runs, "--tasks", "answers", "--variants", "hopscotch",
            "--questions", "10", "--max-new-tokens", "6"]
    assert cli.main(args) == 0
    assert "arithmetic: 10 questions" in capsys.readouterr().out
    run = RunStore(root / "runs").open("r")
    res = json.loads(run.file("answers-kept.json").read_text())
    arith = res["probes"]["arithmetic"]
    assert arith["questions"] == 10 and list(arith["variants"]) == ["original", "hopscotch"]
    texts = read_jsonl(run.file("answers-kept.jsonl"))
    assert len(texts) == 20 and {t["variant"] for t in texts} == {"original", "hopscotch"}
    # the figures follow from the stored texts, by an independent parse of the known answers
    qs = answers.probe(10)
    by = {(t["variant"], t["index"]): t["text"] for t in texts}
    for v in ("original", "hopscotch"):
        acc = sum(answers.final_number(by[(v, i)]) == qs[i]["answer"] for i in range(10)) / 10
        assert arith["variants"][v]["acc"] == pytest.approx(acc)
    # a second call reuses every stored answer: nothing is generated again
    monkeypatch.setattr(answers.data, "generate_answers", lambda *a, **k: pytest.fail("regenerated"))
    assert cli.main(args) == 0
    assert cli.main([*args[:-4], "--questions", "0"]) == 2  # refused before the model loads
