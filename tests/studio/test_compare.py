"""studio/compare.py: side by side on one shared model (streamed pairs equal separate greedy decoding and
leave the model as it was), divergence, per-layer MMD and cost estimates."""

from __future__ import annotations

import threading

import pytest
import torch

import hopscotch_core as hc
from hopscotch_core.engine.generation import generate_text
from hopscotch_core.method.data import encode_prompt
from hopscotch_core.studio import compare
from hopscotch_core.studio.runview import RunView


@pytest.fixture(scope="module")
def tiny(world):
    return hc.load_model(world.model_dir, device="cpu")


def test_stream_pair_equals_two_greedy_generations_and_leaves_the_model_alone(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = list(compare.stream_pair(model, tok, "what is 2 plus 3?", [0, 2], max_new_tokens=12))
    a, b = steps[-1]
    assert len(steps) <= 12 and all(len(x) <= i + 1 for i, (x, _) in enumerate(steps))
    assert tok.decode(a, skip_special_tokens=True).strip() == generate_text(model, tok, "what is 2 plus 3?",
                                                                             max_new_tokens=12)
    assert tok.decode(b, skip_special_tokens=True).strip() == generate_text(model, tok, "what is 2 plus 3?", [0, 2],
                                                                             max_new_tokens=12)
    assert hc.handle_of(model) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_two_users_interleaving_on_one_model_get_their_own_results(tiny):
    model, tok = tiny
    lock = threading.Lock()
    want = {s: list(compare.stream_pair(model, tok, "hello there", s, max_new_tokens=10))[-1] for s in ((1,), (3,))}
    got = {}

    def user(skip):
        got[skip] = list(compare.stream_pair(model, tok, "hello there", skip, max_new_tokens=10, lock=lock,
                                             hold_s=0))[-1]  # lock per step: the users interleave

    threads = [threading.Thread(target=user, args=(s,)) for s in ((1,), (3,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want and hc.handle_of(model) is None


def test_divergence_and_highlight():
    assert compare.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert compare.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert compare.first_divergence([1, 2], [1, 2, 3]) == 2
    from helpers.models import make_tokenizer

    tok = make_tokenizer()
    ids = tok("ab'c d")["input_ids"]
    head, mark, tail = compare.split_at(tok, ids, 2)
    assert (head, mark, tail) == ("ab", "'", "c d")
    html = compare.highlight_html(tok, ids, 2, "<T>")
    assert "<mark" in html and "&#x27;</mark>" in html and "&lt;T&gt;" in html  # text is escaped
    assert compare.highlight_html(tok, ids, None).count("<mark") == 0


def test_prompt_mmd_and_estimate(tiny, world):
    model, tok = tiny
    answers = RunView(world.example).answers("eval", 2)
    same = compare.prompt_mmd(model, tok, skipped=[], answers=answers)  # the same states on both sides
    mmd = compare.prompt_mmd(model, tok, skipped=[1], answers=answers)
    assert len(mmd) == 4 and mmd[0] == pytest.approx(same[0])  # nothing changes before the skipped block
    assert all(m > s + 1e-3 for m, s in zip(mmd[1:], same[1:]))
    assert hc.handle_of(model) is None
    rows = compare.estimate(model, [1, 3], contexts=(16, 64))
    assert [r["context"] for r in rows] == [16, 64]
    assert all(r["flop_bound"] > 1 and r["kv_cache_bytes_skipped"] * 2 == r["kv_cache_bytes_original"] for r in rows)
    assert rows[0]["param_bytes_compact"] < rows[0]["param_bytes_original"]


@pytest.mark.parametrize("parallel", ["threads", "batch"])
def test_stream_pair_both_parallel_modes_match_separate_greedy_decoding(tiny, parallel):
    model, tok = tiny
    scales = 1 + 0.2 * torch.randn(model.config.num_hidden_layers, 4, generator=torch.Generator().manual_seed(1))
    *_, (a, b) = compare.stream_pair(model, tok, "what is 4 plus 4?", [1], scales, max_new_tokens=9,
                                     parallel=parallel, hold_s=0)
    ids = torch.tensor([encode_prompt(tok, "what is 4 plus 4?", True)])

    def greedy(skip, sc):  # the plain loop: full forward per token, no cache, single configuration
        seq = ids
        with hc.attach(model) as hs, hs.applied(skip, sc), torch.no_grad():
            for _ in range(9):
                nxt = model(seq, use_cache=False).logits[0, -1].argmax().view(1, 1)
                if int(nxt) in (tok.eos_token_id, model.config.eos_token_id):
                    break
                seq = torch.cat([seq, nxt], 1)
        return seq[0, ids.shape[1]:].tolist()

    assert a == greedy([], None) and b == greedy([1], scales)
    assert hc.handle_of(model) is None and torch.get_num_threads() >= 1
    lock = threading.Lock()
    gen = compare.stream_pair(model, tok, "what is 4 plus 4?", [1], max_new_tokens=9, parallel=parallel, lock=lock)
    next(gen), next(gen)
    gen.close()  # a reader that stops early (a click elsewhere in the app) frees the model and the lock
    assert hc.handle_of(model) is None and lock.acquire(blocking=False)
    with pytest.raises(hc.HopscotchError, match="parallel"):
        next(compare.stream_pair(model, tok, "x", [1], parallel="gpu"))
