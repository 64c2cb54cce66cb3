"""Prompts, the model's own answers, response-only labels and padding-free packing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import PROMPTS, examples, make_model, make_tokenizer

from hopscotch_core.method import data


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_prompts_from_files(tmp_path):
    j = write(tmp_path / "a.jsonl", '{"question": "q1", "answer": "#### 1"}\n\n{"question": "q2"}\n')
    assert data.load_prompts(j) == [{"prompt": "q1", "answer": "#### 1"}, {"prompt": "q2", "answer": None}]
    c = write(tmp_path / "b.csv", "id,text,prompt\n1,t1,p1\n2,t2,p2\n")
    assert [r["prompt"] for r in data.load_prompts(c)] == ["p1", "p2"]  # 'prompt' comes before 'text'
    assert [r["prompt"] for r in data.load_prompts(c, column="text")] == ["t1", "t2"]
    js = write(tmp_path / "c.json", json.dumps([{"prompt": "x"}, {"prompt": "y"}, {"prompt": "z"}]))
    assert len(data.load_prompts(js, limit=2)) == 2


def test_bundled_gsm8k():
    recs = data.load_prompts("gsm8k")
    assert len(recs) == 1319
    assert recs[0]["prompt"].startswith("Janet") and recs[0]["answer"].strip().endswith("#### 18")


@pytest.mark.parametrize("content,column,match", [
    ("", None, "no records"),
    ('{"question": "a"}\n{"question": \n', None, "line 2: not valid JSON"),
    ('["a", "b"]\n', None, "expected a JSON object"),
    ('{"q": "a"}\n', None, "no prompt column"),
    ('{"question": "a"}\n', "prompt", "no column 'prompt'"),
    ('{"question": ""}\n', None, "empty or non-text"),
])
def test_bad_data_files(tmp_path, content, column, match):
    f = write(tmp_path / "d.jsonl", content)
    with pytest.raises(data.DataError, match=match):
        data.load_prompts(f, column)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_prompts(tmp_path / "none.jsonl")
    with pytest.raises(data.DataError, match="unknown data format"):
        data.load_prompts(write(tmp_path / "x.parquet", "x"))


def test_split_is_seeded_and_disjoint():
    a = data.split_indices(100, 30, 20, seed=1)
    assert a == data.split_indices(100, 30, 20, seed=1) and a != data.split_indices(100, 30, 20, seed=2)
    calib, held = a
    assert len(calib) == 30 and len(held) == 20 and not set(calib) & set(held)
    with pytest.raises(data.DataError, match="only 10"):
        data.split_indices(10, 8, 5, seed=0)


@pytest.mark.parametrize("fam", ["llama", "gemma2", "qwen3"])
def test_packed_loss_equals_per_example_losses(fam):
    model = make_model(fam)
    exs = examples([7, 12, 5, 9, 14, 3])
    rows = data.pack(exs, batch_tokens=24)
    assert len(rows) < len(exs) and all(r.input_ids.shape[1] <= 24 for r in rows)
    assert sorted(i for r in rows for i in r.example_ids) == list(range(len(exs)))
    with torch.no_grad():
        packed = sum(float(data.row_loss(model, r)) for r in rows)
        single = 0.0
        for e in exs:  # reference: an ordinary forward of one example, cross-entropy on its labels
            logits = model(torch.tensor([e.input_ids])).logits[0, :-1]
            single += float(torch.nn.functional.cross_entropy(logits, torch.tensor(e.labels[1:]),
                                                              ignore_index=-100, reduction="sum"))
    assert packed == pytest.approx(single, rel=1e-5)
    assert sum(r.n_tokens for r in rows) == sum(sum(t != -100 for t in e.labels[1:]) for e in exs)


def test_an_example_longer_than_the_budget_gets_its_own_row():
    rows = data.pack(examples([30, 4, 4]), batch_tokens=10)
    assert sorted(r.input_ids.shape[1] for r in rows) == [8, 30]


def test_labels_cover_only_the_response():
    a = data.Answer(0, [5, 6, 7], [8, 9, 2], True)
    (ex,) = data.build_examples([a])
    assert ex.input_ids == [5, 6, 7, 8, 9, 2] and ex.labels == [-100, -100, -100, 8, 9, 2]
    (row,) = data.pack([ex])
    assert row.positions.tolist() == [2, 3, 4] and row.targets.tolist() == [8, 9, 2]


def test_batched_answers_equal_one_by_one_answers():
    model, tok = make_model("llama"), make_tokenizer()
    batched = data.generate_answers(model, tok, PROMPTS, max_new_tokens=8, batch_size=4)
    single = [data.generate_answers(model, tok, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert [a.response_ids for a in batched] == [a.response_ids for a in single]
    assert [a.index for a in batched] == list(range(len(PROMPTS)))
    for a in batched:
        assert a.prompt_ids == tok(PROMPTS[a.index])["input_ids"]
        assert a.finished == (2 in a.response_ids) and (not a.finished or a.response_ids[-1] == 2)


def test_interrupted_generation_resumes():
    model, tok = make_model("llama"), make_tokenizer()
    full = data.generate_answers(model, tok, PROMPTS, max_new_tokens=6, batch_size=2)
    saved: list = []
    calls = iter(range(100))
    part = data.generate_answers(model, tok, PROMPTS, max_new_tokens=6, batch_size=2, on_batch=saved.extend,
                                 should_stop=lambda: next(calls) >= 1)
    assert len(part) == 2 and saved == part
    rest = data.generate_answers(model, tok, PROMPTS, max_new_tokens=6, batch_size=2,
                                 skip={a.index for a in saved})
    assert sorted(saved + rest, key=lambda a: a.index) == full
