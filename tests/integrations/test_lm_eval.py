"""lm-evaluation-harness adapter: HopscotchLM (an HFLM) and the offline task gsm8k_hopscotch, on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.models import make_model, make_tokenizer

import hopscotch_core as hc
from hopscotch_core.integrations import lm_eval as la
from hopscotch_core.method.data import load_prompts
from hopscotch_core.errors import HopscotchError, InvalidBlocksError
from hopscotch_core.engine.generation import generate_text
from hopscotch_core.measure.metrics import extract_flexible, extract_strict

PROMPTS = ["2+2=", "what is 12 * 3? ", "a b c d e f g h"]
SKIP = [0, 2]  # block 0 included: the case where a naive cache reports length 0 and decoding goes wrong
N_NEW = 12


def _lm_eval():
    return pytest.importorskip("lm_eval")


def _greedy_no_cache(model, tok, prompt: str, n: int) -> str:
    """Reference: full forward over the whole sequence at every step (no KV cache), stop at EOS."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


def _gen_requests(prompts, until=("Question:",)):
    from lm_eval.api.instance import Instance

    kw = {"until": list(until), "do_sample": False}
    return [Instance(request_type="generate_until", doc={}, arguments=(p, dict(kw)), idx=i)
            for i, p in enumerate(prompts)]


def _ll_requests(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in
                                                                    model.named_parameters()}


# --------------------------------------------------------------------------------------------- optional import
@pytest.mark.subprocess
def test_importing_hopscotch_core_and_the_adapter_does_not_import_lm_eval():
    code = ("import sys, hopscotch_core, hopscotch_core.integrations.lm_eval as a; "
            "assert 'lm_eval' not in sys.modules, 'lm_eval imported'; print(a.local_tasks())")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['gsm8k_hopscotch']"


def test_missing_lm_eval_gives_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    model, tok = make_model("llama"), make_tokenizer()
    with pytest.raises(la.LMEvalUnavailableError, match=r"pip install lm_eval==0\.4\.13") as e:
        la.run_lm_eval(model, tok, skipped=[1])
    assert isinstance(e.value, HopscotchError) and isinstance(e.value, ImportError)
    assert hc.handle_of(model) is None
    with pytest.raises(SystemExit) as ex:
        la.main(["--model", "hopscotch", "--tasks", "gsm8k_hopscotch"])
    assert ex.value.code == 2
    assert "pip install lm_eval==0.4.13" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- generation
def test_generate_until_uses_the_kv_cache_and_equals_uncached_greedy_decoding():
    _lm_eval()
    model, tok = make_model("llama"), make_tokenizer()
    before = _state(model)
    with hc.attach(model) as hs:
        hs.skip(SKIP)
        ref = [_greedy_no_cache(model, tok, p, N_NEW) for p in PROMPTS]
    orig = [_greedy_no_cache(model, tok, p, N_NEW) for p in PROMPTS]
    ours = [generate_text(model, tok, p, skipped=SKIP, max_new_tokens=N_NEW, chat=False) for p in PROMPTS]
    assert all(len(r) >= 3 for r in ref)                     # real text, not an immediate EOS
    assert ref != orig                                       # the skip set changes the answers
    assert ours == [r.strip() for r in ref]

    lengths = []
    lm = la.hopscotch_lm(model, tok, skipped=SKIP, batch_size=3, max_gen_toks=N_NEW)
    try:
        assert hc.handle_of(model) is lm.hopscotch and lm.skipped == tuple(SKIP)
        hook = model.get_decoder().register_forward_pre_hook(
            lambda mod, args, kwargs: lengths.append((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                                      else kwargs["inputs_embeds"]).shape[1]), with_kwargs=True)
        try:
            got = lm.generate_until(_gen_requests(PROMPTS), disable_tqdm=True)
        finally:
            hook.remove()
    finally:
        lm.close()
    assert got == ref                                        # one left-padded batch of 3, KV cache on
    # one prefill over the padded prompts, then one token per step: the cache is in use
    assert lengths[0] == max(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert len(lengths) > 1 and set(lengths[1:]) == {1}
    # detached: the model is exactly as before
    assert hc.handle_of(model) is None
    after = _state(model)
    assert after[1] == before[1]
    assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
    assert [_greedy_no_cache(model, tok, p, N_NEW) for p in PROMPTS] == orig


def test_compact_model_and_existing_handle_are_evaluated_as_they_are():
    _lm_eval()
    model, tok = make_model("llama"), make_tokenizer()
    hs = hc.attach(model)
    hs.skip([1])
    lm = la.hopscotch_lm(model, tok, max_gen_toks=N_NEW)      # uses the handle that is there
    got = lm.generate_until(_gen_requests(PROMPTS[:2]), disable_tqdm=True)
    assert lm.skipped == (1,)
    lm.close()
    assert hc.handle_of(model) is hs                          # not ours: left attached
    with pytest.raises(la.LMEvalError, match="already has a Hopscotch handle"):
        la.hopscotch_lm(model, tok, skipped=[2])
    small = hs.compact()
    hs.detach()
    lm_small = la.hopscotch_lm(small, tok, max_gen_toks=N_NEW)
    assert lm_small.skipped == (1,) and hc.handle_of(small) is None
    assert lm_small.generate_until(_gen_requests(PROMPTS[:2]), disable_tqdm=True) == got
    with pytest.raises(la.LMEvalError, match="compacted"):
        la.hopscotch_lm(small, tok, skipped=[2])


# --------------------------------------------------------------------------------------------- loglikelihood
def test_loglikelihood_matches_stock_hflm_unskipped_and_the_skipped_forward_when_skipped():
    _lm_eval()
    from lm_eval.models.huggingface import HFLM

    model, tok = make_model("llama"), make_tokenizer()
    pairs = [("Question: 2+2=", " 4"), ("the cat sat on", " the mat"), ("12 * 3 =", " 36")]
    stock = [ll for ll, _ in HFLM(pretrained=model, tokenizer=tok, batch_size=2).loglikelihood(
        _ll_requests(pairs), disable_tqdm=True)]
    with la.hopscotch_lm(model, tok, batch_size=2) as lm0:
        assert lm0.hopscotch is None
        same = [ll for ll, _ in lm0.loglikelihood(_ll_requests(pairs), disable_tqdm=True)]
    with la.hopscotch_lm(model, tok, skipped=[1], batch_size=2) as lm1:
        skipped = [ll for ll, _ in lm1.loglikelihood(_ll_requests(pairs), disable_tqdm=True)]
        manual = []
        with torch.no_grad():
            for ctx, cont in pairs:
                ids = torch.tensor([tok(ctx + cont)["input_ids"]])
                n_ctx = len(tok(ctx)["input_ids"])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
                manual.append(float(sum(logp[t - 1, ids[0, t]] for t in range(n_ctx, ids.shape[1]))))
    assert same == stock                                     # nothing skipped: exactly lm-eval's own HFLM
    assert all(abs(a - b) > 1e-3 for a, b in zip(skipped, stock))
    assert skipped == pytest.approx(manual, abs=1e-4)
    assert hc.handle_of(model) is None


# --------------------------------------------------------------------------------------------- task + run
def test_run_lm_eval_on_the_local_task_runs_offline_with_both_filters():
    _lm_eval()
    model, tok = make_model("llama"), make_tokenizer()
    x = torch.randint(3, 90, (1, 10))
    with torch.no_grad():
        logits_before = model(input_ids=x).logits
    res = la.run_lm_eval(model, tok, limit=3, skipped=[1], num_fewshot=0, batch_size=3, max_gen_toks=16,
                         log_samples=True)
    r = res["results"]["gsm8k_hopscotch"]
    for f in ("strict-match", "flexible-extract"):
        assert 0.0 <= r[f"exact_match,{f}"] <= 1.0
    assert res["config"]["hopscotch_skipped"] == [1]
    assert res["n-shot"]["gsm8k_hopscotch"] == 0
    gold = load_prompts("gsm8k", limit=3)
    samples = res["samples"]["gsm8k_hopscotch"]
    assert len(samples) == 6                                 # 3 problems x 2 filters
    for s in samples:
        i = s["doc_id"]
        assert s["arguments"][0][0] == f"Question: {gold[i]['prompt']}\nAnswer:"
        assert s["target"] == gold[i]["answer"]
        resp = s["resps"][0][0]
        extracted = extract_strict(resp) if s["filter"] == "strict-match" else extract_flexible(resp)
        assert (s["filtered_resps"][0] == "[invalid]") == (extracted is None)
    assert sorted({s["doc_id"] for s in samples}) == [0, 1, 2]
    assert hc.handle_of(model) is None
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, logits_before)


def test_default_five_shot_prompt_has_lm_evals_gsm8k_format():
    _lm_eval()
    model, tok = make_model("llama", max_position_embeddings=4096), make_tokenizer()
    res = la.run_lm_eval(model, tok, limit=1, max_gen_toks=2, log_samples=True)
    assert res["n-shot"]["gsm8k_hopscotch"] == 5
    prompt = res["samples"]["gsm8k_hopscotch"][0]["arguments"][0][0]
    shots = prompt.split("\n\n")
    assert len(shots) == 6 and all(s.startswith("Question: ") for s in shots)
    assert all("\nAnswer: " in s and "\n#### " in s for s in shots[:5])
    assert shots[0].endswith("#### 72") and shots[4].endswith("#### 624")
    assert shots[5] == f"Question: {load_prompts('gsm8k', limit=1)[0]['prompt']}\nAnswer:"


class _Answering:
    """lm-eval LMs that answer each GSM8K request from its gold solution (to check the task's scoring)."""

    @staticmethod
    def make(style: str):
        from lm_eval.api.model import LM

        class Oracle(LM):
            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for r in requests:
                    gold = r.doc["answer"].split("#### ")[-1]
                    out.append(r.doc["answer"] if style == "gsm8k" else f"So she makes {gold} dollars. Question:")
                return out

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Oracle()


@pytest.mark.parametrize("style, strict, flexible", [("gsm8k", 1.0, 1.0), ("plain", 0.0, 1.0)])
def test_task_scores_gold_answers_like_lm_evals_gsm8k(style, strict, flexible):
    _lm_eval()
    from lm_eval import simple_evaluate

    res = simple_evaluate(model=_Answering.make(style), tasks=["gsm8k_hopscotch"], limit=5, num_fewshot=0,
                          task_manager=la.task_manager())
    r = res["results"]["gsm8k_hopscotch"]
    assert r["exact_match,strict-match"] == strict
    assert r["exact_match,flexible-extract"] == flexible


def test_unknown_task_is_a_clear_hopscotch_error():
    _lm_eval()
    model, tok = make_model("llama"), make_tokenizer()
    with pytest.raises(la.LMEvalError, match="unknown task 'gsm8k_nope'.*gsm8k_hopscotch") as e:
        la.run_lm_eval(model, tok, tasks=["gsm8k_nope"], skipped=[1])
    assert isinstance(e.value, HopscotchError)
    assert hc.handle_of(model) is None


# --------------------------------------------------------------------------------------------- registry + CLI
def test_registered_model_builds_from_model_args(tiny_dir, tmp_path):
    _lm_eval()
    from lm_eval.api.registry import get_model

    cls = la.register()
    assert get_model("hopscotch") is cls is la.HopscotchLM
    # lm-eval's CLI passes its own device default (cuda:0) beside model_args; model_args win
    lm = cls.create_from_arg_string(f"pretrained={tiny_dir},skip=1;3,device=cpu,max_gen_toks=16,batch_size=2",
                                    {"batch_size": 1, "device": "cuda:0", "max_batch_size": None})
    assert lm.skipped == (1, 3) and lm.max_gen_toks == 16 and lm.batch_size == 2
    assert str(lm.device) == "cpu" and lm.get_model_info()["hopscotch_skipped"] == [1, 3]
    lm.close()

    model, _ = hc.load_model(tiny_dir, device="cpu")
    hs = hc.attach(model)
    hs.skip([2])
    scales = 1 + 0.1 * torch.randn(hs.num_layers, 4, generator=torch.Generator().manual_seed(0))
    hs.set_scales(scales)
    hs.save(tmp_path / "adapter")
    expected = hs.effective_scales()
    hs.detach()
    lm2 = cls.create_from_arg_obj({"pretrained": str(tiny_dir), "adapter": str(tmp_path / "adapter")},
                                  {"device": "cpu"})
    assert lm2.skipped == (2,)
    assert torch.equal(lm2.hopscotch.effective_scales(), expected)
    lm2.close()

    with pytest.raises(la.LMEvalError, match="skip=4;17"):
        cls.create_from_arg_obj({"pretrained": str(tiny_dir), "skip": "one"})
    with pytest.raises(InvalidBlocksError):
        cls.create_from_arg_obj({"pretrained": str(tiny_dir), "skip": 9})


def test_command_line_runner_evaluates_a_skip_set(tiny_dir, tmp_path, capsys):
    _lm_eval()
    la.main(["--model", "hopscotch", "--model_args", f"pretrained={tiny_dir},skip=1;2,device=cpu,max_gen_toks=8",
             "--tasks", "gsm8k_hopscotch", "--limit", "2", "--num_fewshot", "0", "--output_path", str(tmp_path)])
    out = capsys.readouterr().out
    assert "gsm8k_hopscotch" in out and "strict-match" in out and "flexible-extract" in out
    files = list(tmp_path.rglob("results_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["config"]["hopscotch_skipped"] == [1, 2]
    assert "exact_match,strict-match" in saved["results"]["gsm8k_hopscotch"]
