"""The `deci` export (NVIDIA's Nemotron-NAS / DeciLM layout) loads where it claims to, with the attached model's
numbers, and is refused where that layout cannot hold the model.

- stock transformers, in a fresh process with nothing of ours importable: the deci folder (its own configuration and
  modeling files, trust_remote_code=True) computes the logits and greedy tokens of the stock `hf` export of the same
  handle and of the attached model itself; its KV cache holds one entry per layer that keeps its attention, and a
  skipped block has no attention parameters at all;
- vLLM and SGLang: config.json and the safetensors header read the way their code reads them
  (vllm/model_executor/models/nemotron_nas.py DeciLMDecoderLayer and DeciLMForCausalLM.load_weights,
  vllm/transformers_utils/model_arch_config_convertor.py NemotronNasModelArchConfigConvertor.get_total_num_kv_heads,
  vllm/config/model.py get_num_layers_by_block_type; python/sglang/srt/models/nemotron_nas.py with the
  LlamaAttention of python/sglang/srt/models/llama.py) give the modules, sizes and tensor names the file holds,
  and the sizes of the source model;
- refusals (first layer without attention, other families, sliding windows) before anything is written; the CLI.

The references are the attached model (engine/test_families.py checks it against the per-family formula) and the
`hf` export (test_export.py checks it in stock transformers); the readers' derivations are written out here from
their source, not taken from deci_export.py. Tolerances are stated where used, with what was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from helpers import ROOT
from helpers.models import make_model, make_tokenizer, random_deltas
from safetensors import safe_open

import hopscotch_core as hc
from hopscotch_core import cli
from hopscotch_core.integrations.deci_export import DeciExportError
from hopscotch_core.integrations.export import export, read_export

LAYERS = 4
SHAPE = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")
IDS = torch.randint(3, 101, (2, 32), generator=torch.Generator().manual_seed(7))
NEW = 8  # greedy tokens generated from IDS

# name -> (family, make_model overrides, attention skipped, whole layers removed, scalars, channel, rank).
# scalars "all": random b and s with eps ~ 0 (the fold is then exact in real arithmetic, folding.py); "b": random
# b with s = 1 at the model's own eps (also exact). The channel multipliers and the deltas each move these logits
# by 0.2-0.4 of max |logit| (measured), so a fold that lost either would miss the 1e-4 bounds below by far.
CASES = {
    # Llama: negative residual scale, channel multipliers, rank-3 deltas
    "llama": ("llama", {**SHAPE, "rms_norm_eps": 1e-30}, [1, 3], [], "all", True, 3),
    # Llama-3 RoPE scaling, which SGLang reads from rope_theta / rope_scaling and vLLM from rope_parameters
    "llama3": ("llama", {**SHAPE, "rope_parameters": LLAMA3_ROPE}, [1], [], "b", False, 0),
    # Mistral without a window; head_dim 8 (helpers/models.py) != hidden / heads; hidden 80: ffn_mult 4.8
    "mistral": ("mistral", {**SHAPE, "hidden_size": 80, "sliding_window": None}, [2], [], "b", True, 2),
    # Qwen2: q/k/v biases (made random below, so a reader that ignored them would differ), tied embeddings
    "qwen2": ("qwen2", {**SHAPE, "rms_norm_eps": 1e-30, "tie_word_embeddings": True}, [1, 2], [], "all", True, 2),
    # layer 0 removed whole (attention and MLP): the first layer that computes anything, 1, keeps its attention
    "whole0": ("llama", {**SHAPE, "rms_norm_eps": 1e-30}, [0, 2], [0], "all", False, 0),
    # MLP width 96, not a multiple of 256: written as intermediate_size (vLLM reads it, SGLang cannot)
    "width96": ("llama", {**SHAPE, "intermediate_size": 96}, [2], [], "b", False, 0),
}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


def _rel(ref, got) -> float:
    return ((ref - got).abs().max() / ref.abs().max()).item()


def _chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _sharpen(model):
    """Sharper attention than random init gives, so that positions (RoPE) matter."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def _case_model(name):
    fam, over, skip, whole, scalars, channel, rank = CASES[name]
    model = make_model(fam, **over)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("_proj.bias"):  # Qwen2's q/k/v biases start at zero: make them matter
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    if name == "llama3":
        _sharpen(model)
    hs = hc.attach(model).skip(skip).skip_mlp(whole)
    s = 1 + 0.3 * torch.randn(LAYERS, 4, generator=g)
    if scalars == "all":
        s[2, 1] = -s[2, 1].abs()  # a negative residual scale: the fold negates norms from here on
    else:
        s[:, [1, 3]] = 1.0
    hs.set_scales(s)
    if channel:
        hs.set_channel_scales(1 + 0.2 * torch.randn(LAYERS, 2, hs.hidden_size, generator=g))
    if rank:
        hs.set_lora(random_deltas(hs, rank, seed=3))
    return model, hs


# Runs in a fresh interpreter where nothing of ours can be imported (an import hook refuses hopscotch_core and the
# test helpers, which the editable install would otherwise put on the path): stock transformers and the folders.
_FRESH = r"""
import copy, json, pickle, sys

class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hopscotch_core", "helpers"):
            raise ImportError(f"{name} must not be imported here")
        return None

sys.meta_path.insert(0, _Refuse())
import torch
from transformers import AutoConfig, AutoModelForCausalLM

spec = json.load(open(sys.argv[1]))
results = {}

def cache_of(out):
    for attr in ("cache", "past_key_values"):
        c = getattr(out, attr, None)
        if c is not None:
            return c
    raise SystemExit("no cache in the output")

def layers_of(cache):
    return [None if l.keys is None else list(l.keys.shape) for l in cache.layers]

for case in spec["cases"]:
    ids = torch.tensor(case["ids"])
    mask = torch.ones_like(ids)
    hf = AutoModelForCausalLM.from_pretrained(case["hf"]).eval()
    deci = AutoModelForCausalLM.from_pretrained(case["deci"], trust_remote_code=True).eval()
    r = {"hf_class": f"{type(hf).__module__}.{type(hf).__name__}",
         "deci_class": f"{type(deci).__module__}.{type(deci).__name__}",
         "dtypes": sorted({str(p.dtype) for m in (hf, deci) for p in m.parameters()}),
         "deci_params": {n: list(p.shape) for n, p in deci.named_parameters()}}
    with torch.no_grad():
        r["hf_logits"] = hf(ids).logits
        r["deci_logits"] = deci(ids).logits
        out = deci(ids, attention_mask=mask, use_cache=True)
        r["deci_cache"] = layers_of(cache_of(out))
        r["hf_cache"] = layers_of(cache_of(hf(ids, attention_mask=mask, use_cache=True)))
        kw = dict(attention_mask=mask, max_new_tokens=case["new"], do_sample=False)
        r["hf_gen"] = hf.generate(ids, **kw)[:, ids.shape[1]:].tolist()
        r["deci_gen"] = deci.generate(ids, **kw)[:, ids.shape[1]:].tolist()
    # the config object vLLM / SGLang get (AutoConfig, trust_remote_code), after the copies they make of it,
    # read with their attribute accesses
    cfg = AutoConfig.from_pretrained(case["deci"], trust_remote_code=True)
    cfg = copy.deepcopy(pickle.loads(pickle.dumps(cfg)))
    blocks = []
    for b in cfg.block_configs:
        row = {"att_no_op": b.attention.no_op, "ffn_no_op": b.ffn.no_op}
        if not b.attention.no_op:
            row["n_heads_in_group"] = b.attention.n_heads_in_group
        if not b.ffn.no_op:
            row["has_ffn_mult"] = hasattr(b.ffn, "ffn_mult")
            row["ffn"] = b.ffn.ffn_mult if row["has_ffn_mult"] else b.ffn.intermediate_size
        blocks.append(row)
    r["config_object"] = {"blocks": blocks, "qkv_bias": getattr(cfg, "qkv_bias", None),
                          "attention_bias": getattr(cfg, "attention_bias", None),
                          "rope_theta": getattr(cfg, "rope_theta", None),
                          "rope_parameters": dict(getattr(cfg, "rope_parameters", None) or {})}
    results[case["name"]] = r
    if "chat" in case:  # the folder's own tokenizer and chat template
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(case["deci"])
        r["chat"] = []
        for prompt in case["chat"]:
            p = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
            with torch.no_grad():
                g = deci.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=case["chat_new"],
                                  do_sample=False)
            r["chat"].append({"prompt": p[0].tolist(), "new": g[0, p.shape[1]:].tolist()})
    del hf, deci

results["hopscotch_modules"] = sorted(m for m in sys.modules if m.startswith(("hopscotch", "helpers")))
torch.save(results, spec["out"])
"""


def _run_fresh(cases: list[dict], where: Path, timeout: int = 600) -> dict:
    spec = where / "spec.json"
    out = where / "fresh.pt"
    spec.write_text(json.dumps({"cases": cases, "out": str(out)}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(where / "hf-modules"),
        "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-c", _FRESH, str(spec)], cwd=where, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got.pop("hopscotch_modules") == []  # stock transformers and the folder alone computed it
    return got


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case of CASES: the attached model's logits and greedy tokens, its hf and deci exports, and what a
    fresh transformers-only process computes from the two folders (one process for all cases)."""
    where = tmp_path_factory.mktemp("deci")
    cases, fresh = {}, []
    for name, (fam, over, skip, whole, *_rest) in CASES.items():
        model, hs = _case_model(name)
        ref = _logits(model, IDS)
        with torch.no_grad():
            gen = model.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=NEW,
                                 do_sample=False)[:, IDS.shape[1]:].tolist()
        tok = _chat_tokenizer()
        hf_dir = export(hs, where / f"{name}-hf", format="hf", tokenizer=tok)
        deci_dir = export(hs, where / f"{name}-deci", format="deci", tokenizer=tok)
        cases[name] = SimpleNamespace(name=name, family=fam, over=over, skip=skip, whole=whole, ref=ref, gen=gen,
                                      hf=hf_dir, deci=deci_dir, config=model.config, hs=hs)
        fresh.append({"name": name, "hf": str(hf_dir), "deci": str(deci_dir), "ids": IDS.tolist(), "new": NEW})
    got = _run_fresh(fresh, where)
    for name, c in cases.items():
        c.fresh = got[name]
    return cases


# ------------------------------------------------------------------------------------------------ transformers
@pytest.mark.parametrize("name", list(CASES))
def test_deci_folder_in_fresh_transformers_computes_the_hf_export_and_the_attached_model(name, exported):
    c = exported[name]
    f = c.fresh
    assert f["hf_class"].startswith("transformers.models.")
    # the folder's own modeling file, imported by transformers from the folder (its dynamic-module package)
    assert f["deci_class"].startswith("transformers_modules.") and f["deci_class"].endswith(
        "modeling_hopscotch_deci.DeciLMForCausalLM")
    assert f["dtypes"] == ["torch.float32"]
    hf, deci = f["hf_logits"].double(), f["deci_logits"].double()
    assert hf.shape == deci.shape == c.ref.shape
    # measured (fp32, 1 thread): hf vs deci <= 1e-7 of max |logit| on every case, deci vs attached <= 1e-6;
    # the bounds leave 10-100x margin, and a wrong size, bias, eps or RoPE lands at 1e-3 and beyond
    assert _rel(hf, deci) <= 1e-5, _rel(hf, deci)
    assert _rel(c.ref, deci) <= 1e-4, _rel(c.ref, deci)
    assert _rel(c.ref, hf) <= 1e-4, _rel(c.ref, hf)
    assert torch.equal(hf.argmax(-1), deci.argmax(-1)) and torch.equal(c.ref.argmax(-1), deci.argmax(-1))
    # greedy decoding through each model's cache (the deci cache made by generate() from the config)
    assert f["deci_gen"] == f["hf_gen"] == c.gen and all(len(g) > 0 for g in c.gen)
    # one cache entry per layer that keeps its attention, each holding keys for the whole prompt
    kv = c.config.num_key_value_heads
    head_dim = getattr(c.config, "head_dim", None) or c.config.hidden_size // c.config.num_attention_heads
    kept = LAYERS - len(c.skip)
    assert f["deci_cache"] == [[IDS.shape[0], kv, IDS.shape[1], head_dim]] * kept
    assert len(f["hf_cache"]) == LAYERS  # the hf export still computes (and caches) the skipped blocks
    params = f["deci_params"]
    for i in range(LAYERS):
        attn = [n for n in params if n.startswith(f"model.layers.{i}.self_attn.")]
        norm1 = f"model.layers.{i}.input_layernorm.weight" in params
        mlp = [n for n in params if n.startswith(f"model.layers.{i}.mlp.")]
        assert (len(attn) > 0, norm1) == ((i not in c.skip),) * 2, (i, attn)
        assert (len(mlp) > 0) == (i not in c.whole), (i, mlp)


def test_llama3_rope_scaling_matters_on_these_inputs(exported):
    # the agreement above (1e-5) means something for RoPE only if RoPE scaling changes these logits by far more:
    # the same weights under unscaled RoPE (measured: 0.48 of max |logit|). For scale: the deci folder's own
    # config.json with its RoPE entries set to unscaled misses the attached model by 0.44, and the qwen2 folder's
    # with rms_norm_eps dropped by 2e-4, against the 5e-7 measured on the real folders
    c = exported["llama3"]
    over = {**c.over, "rope_parameters": {"rope_type": "default", "rope_theta": LLAMA3_ROPE["rope_theta"]}}
    plain = _sharpen(make_model("llama", **over))
    scaled = _sharpen(make_model("llama", **c.over))
    assert _rel(_logits(scaled, IDS), _logits(plain, IDS)) > 1e-2


# ------------------------------------------------------------------------------------------------ vLLM / SGLang
def _ns(x):
    """JSON as attributes (what the configuration file gives the readers): a missing key is an AttributeError."""
    if isinstance(x, dict):
        return SimpleNamespace(**{k: _ns(v) for k, v in x.items()})
    if isinstance(x, list):
        return [_ns(v) for v in x]
    return x


def _vllm_width(ffn_mult: float, hidden: int) -> int:
    # vllm nemotron_nas.py _ffn_mult_to_intermediate_size / _find_multiple (same code in SGLang's file)
    n = int(2 * ffn_mult * hidden / 3)
    return n if n % 256 == 0 else n + 256 - n % 256


def _reader_layers(cfg, engine: str) -> list[dict]:
    """Per layer, the modules vLLM's or SGLang's DeciLMDecoderLayer builds from `cfg` (config.json as attributes)
    and their sizes."""
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    if engine == "vllm":  # llama.py LlamaAttention
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    else:  # sglang llama.py LlamaAttention
        head_dim = getattr(cfg, "head_dim", hidden // heads)
    attention_bias = getattr(cfg, "attention_bias", False) or getattr(cfg, "bias", False)
    bias_o = attention_bias  # vLLM: bias_o_proj, fixed before qkv_bias is read
    if hasattr(cfg, "qkv_bias"):
        attention_bias = cfg.qkv_bias
    if engine == "sglang":  # SGLang's LlamaAttention puts its one `bias` on qkv_proj and o_proj alike
        bias_o = attention_bias
    out = []
    for bc in cfg.block_configs:
        layer = {"attention": None, "mlp": None}
        if not bc.attention.no_op:
            kv = heads // bc.attention.n_heads_in_group
            layer["attention"] = dict(kv=kv, head_dim=head_dim, qkv_bias=bool(attention_bias), o_bias=bool(bias_o))
        if not bc.ffn.no_op:
            if engine == "vllm":
                width = (_vllm_width(bc.ffn.ffn_mult, hidden) if hasattr(bc.ffn, "ffn_mult")
                         else bc.ffn.intermediate_size)
            else:  # SGLang reads ffn_mult only
                width = _vllm_width(bc.ffn.ffn_mult, hidden)
            layer["mlp"] = dict(width=width, bias=bool(getattr(cfg, "mlp_bias", False)))
        out.append(layer)
    return out


def _expected_tensors(cfg, layers: list[dict]) -> dict[str, list[int]]:
    """The checkpoint names and shapes those modules load (q/k/v and gate/up are the stacked qkv_proj and
    gate_up_proj's shards; every other name is looked up among the module's parameters)."""
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    t = {"model.embed_tokens.weight": [cfg.vocab_size, hidden], "model.norm.weight": [hidden]}
    if not cfg.tie_word_embeddings:  # both engines skip lm_head.weight when tied
        t["lm_head.weight"] = [cfg.vocab_size, hidden]
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}."
        if (a := layer["attention"]) is not None:
            q, kv = heads * a["head_dim"], a["kv"] * a["head_dim"]
            t |= {p + "input_layernorm.weight": [hidden], p + "self_attn.q_proj.weight": [q, hidden],
                  p + "self_attn.k_proj.weight": [kv, hidden], p + "self_attn.v_proj.weight": [kv, hidden],
                  p + "self_attn.o_proj.weight": [hidden, q]}
            if a["qkv_bias"]:
                t |= {p + "self_attn.q_proj.bias": [q], p + "self_attn.k_proj.bias": [kv],
                      p + "self_attn.v_proj.bias": [kv]}
            if a["o_bias"]:
                t[p + "self_attn.o_proj.bias"] = [hidden]
        if (m := layer["mlp"]) is not None:
            w = m["width"]
            t |= {p + "post_attention_layernorm.weight": [hidden], p + "mlp.gate_proj.weight": [w, hidden],
                  p + "mlp.up_proj.weight": [w, hidden], p + "mlp.down_proj.weight": [hidden, w]}
    return t


def _header(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("name", list(CASES))
def test_vllm_and_sglang_read_the_folder_as_the_source_model_with_skipped_attention_absent(name, exported):
    c = exported[name]
    raw = json.loads((c.deci / "config.json").read_text())
    cfg = _ns(raw)
    src = c.config
    assert raw["model_type"] == "nemotron-nas" and raw["architectures"] == ["DeciLMForCausalLM"]
    assert len(raw["block_configs"]) == raw["num_hidden_layers"] == LAYERS
    # the auto_map names files the folder carries
    for ref in raw["auto_map"].values():
        assert (c.deci / (ref.split(".")[0] + ".py")).is_file()
    header = _header(c.deci / "model.safetensors")
    layers = _reader_layers(cfg, "vllm")
    # what vLLM derives is the source model: heads, KV heads, head size, MLP width, biases, vocabulary, eps, rope
    head_dim = getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads
    qkv_bias = c.family == "qwen2"
    for i, layer in enumerate(layers):
        want_att = None if i in c.skip else dict(kv=src.num_key_value_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                                                 o_bias=False)
        want_mlp = None if i in c.whole else dict(width=src.intermediate_size, bias=False)
        assert layer == {"attention": want_att, "mlp": want_mlp}, i
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size) == (src.hidden_size, src.num_attention_heads,
                                                                         src.vocab_size)
    assert cfg.rms_norm_eps == src.rms_norm_eps and cfg.hidden_act == "silu"
    assert cfg.tie_word_embeddings == bool(src.tie_word_embeddings)
    assert cfg.max_position_embeddings == src.max_position_embeddings
    # the checkpoint holds exactly the tensors vLLM's modules load, with their shapes (a tensor vLLM lacks a
    # parameter for is a KeyError in its loader; one it has but the file lacks stays uninitialised)
    assert header == _expected_tensors(cfg, layers)
    # vLLM's KV-cache sizing: the first attending block's KV heads, one cache layer per attending block
    first = next(bc for bc in cfg.block_configs if not bc.attention.no_op)
    assert cfg.num_attention_heads // first.attention.n_heads_in_group == src.num_key_value_heads
    assert sum(not bc.attention.no_op for bc in cfg.block_configs) == LAYERS - len(c.skip)
    # RoPE: vLLM reads rope_parameters; SGLang reads rope_theta and rope_scaling
    src_rope = dict(src.rope_parameters)
    assert raw["rope_parameters"]["rope_type"] == src_rope["rope_type"]
    assert raw["rope_theta"] == src_rope["rope_theta"] == raw["rope_parameters"]["rope_theta"]
    if src_rope["rope_type"] == "default":
        assert raw.get("rope_scaling") is None  # absent: plain RoPE, every reader's default
    else:
        want = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
        assert raw["rope_scaling"] == want and raw["rope_parameters"] == {**want, "rope_theta": raw["rope_theta"]}
    # the config object the engines get from AutoConfig (the folder's configuration file), after pickling and
    # copying, reads the same as the JSON
    obj = c.fresh["config_object"]
    for i, (b, bc) in enumerate(zip(obj["blocks"], raw["block_configs"])):
        assert b["att_no_op"] == bc["attention"]["no_op"] == (i in c.skip)
        assert b["ffn_no_op"] == bc["ffn"]["no_op"] == (i in c.whole)
        if not b["att_no_op"]:
            assert b["n_heads_in_group"] == bc["attention"]["n_heads_in_group"]
        if not b["ffn_no_op"]:
            assert b["has_ffn_mult"] == ("ffn_mult" in bc["ffn"])
            assert b["ffn"] == bc["ffn"]["ffn_mult" if b["has_ffn_mult"] else "intermediate_size"]
    assert obj["qkv_bias"] == raw["qkv_bias"] and obj["attention_bias"] == raw["attention_bias"]
    assert obj["rope_theta"] == raw["rope_theta"] and obj["rope_parameters"] == raw["rope_parameters"]
    # every tensor is the hf export's tensor of that name, bit for bit; what the deci file leaves out is, in the
    # hf export, the attention of skipped blocks, whose output projection is zero there (it contributes nothing)
    deci, hf = _tensors(c.deci / "model.safetensors"), _tensors(c.hf / "model.safetensors")
    for k, v in deci.items():
        assert torch.equal(v, hf[k]), k
    left_out = {k.split(".self_attn.")[0] for k in set(hf) - set(deci) if ".self_attn." in k}
    assert left_out == {f"model.layers.{i}" for i in c.skip}
    for i in c.skip:
        assert not hf[f"model.layers.{i}.self_attn.o_proj.weight"].any()
    rec = read_export(c.deci)
    assert rec["format"] == "deci" and rec["deci"]["readers"] == raw["hopscotch"]["readers"]
    assert raw["hopscotch"]["skipped"] == sorted(c.skip) and raw["hopscotch"]["skipped_mlp"] == sorted(c.whole)
    assert rec["deci"]["attention_layers"] == LAYERS - len(c.skip)
    assert rec["check"]["rel_diff"] <= 1e-5


@pytest.mark.parametrize("name", [n for n in CASES if n not in ("qwen2", "width96")])
def test_sglang_reads_what_the_export_says_it_reads(name, exported):
    c = exported[name]
    raw = json.loads((c.deci / "config.json").read_text())
    assert raw["hopscotch"]["readers"]["sglang"] == "yes"
    cfg = _ns(raw)
    assert _header(c.deci / "model.safetensors") == _expected_tensors(cfg, _reader_layers(cfg, "sglang"))


def test_a_qwen2_folder_is_declared_unreadable_by_sglang_whose_attention_bias_covers_o_proj(exported):
    """SGLang's LlamaAttention (python/sglang/srt/models/llama.py) puts its one `bias` argument on qkv_proj and
    o_proj, and nemotron_nas.py passes bias=config.qkv_bias: on a Qwen2 folder (q/k/v biases, none on o_proj) it
    would build o_proj biases the checkpoint never fills. The export says so instead of claiming SGLang loads it."""
    c = exported["qwen2"]
    raw = json.loads((c.deci / "config.json").read_text())
    assert raw["hopscotch"]["readers"]["sglang"].startswith("no: ") and "output projection" in \
        raw["hopscotch"]["readers"]["sglang"]
    assert raw["hopscotch"]["readers"]["vllm"] == "yes"
    cfg = _ns(raw)
    expected = _expected_tensors(cfg, _reader_layers(cfg, "sglang"))
    missing = sorted(set(expected) - set(_header(c.deci / "model.safetensors")))
    assert missing and all(name.endswith("self_attn.o_proj.bias") for name in missing)


def test_a_width_that_is_not_a_multiple_of_256_is_written_as_intermediate_size_for_vllm_only(exported):
    c = exported["width96"]
    raw = json.loads((c.deci / "config.json").read_text())
    for bc in raw["block_configs"]:
        assert "ffn_mult" not in bc["ffn"] and bc["ffn"]["intermediate_size"] == 96
    cfg = _ns(raw)
    assert [layer["mlp"]["width"] for layer in _reader_layers(cfg, "vllm")] == [96] * LAYERS
    with pytest.raises(AttributeError, match="ffn_mult"):  # SGLang's `block_config.ffn.ffn_mult`
        _reader_layers(cfg, "sglang")
    assert _header(c.deci / "model.safetensors")["model.layers.0.mlp.down_proj.weight"] == [64, 96]
    readers = read_export(c.deci)["deci"]["readers"]
    assert readers == raw["hopscotch"]["readers"]
    assert readers["sglang"].startswith("no: ") and "ffn_mult" in readers["sglang"]
    assert readers["vllm"] == "yes" and readers["transformers"].startswith("yes")
    # a multiple of 256 gets ffn_mult, from which the readers' formula gives the width back
    for name in ("llama", "mistral"):
        src = exported[name].config
        raw = json.loads((exported[name].deci / "config.json").read_text())
        for bc in raw["block_configs"]:
            assert "intermediate_size" not in bc["ffn"]
            assert _vllm_width(bc["ffn"]["ffn_mult"], src.hidden_size) == src.intermediate_size
    assert raw["block_configs"][0]["ffn"]["ffn_mult"] == pytest.approx(4.8)  # mistral: 3 * 256 / (2 * 80)


# ------------------------------------------------------------------------------------------------ refusals
def test_what_the_deci_layout_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    tok = make_tokenizer()
    small = dict(SHAPE)
    cases = [
        (hc.attach(make_model("llama", **small)).skip([0, 2]), r"attention of block 0, the first layer"),
        # layer 0 removed whole and layer 1's attention skipped: the first working layer (1) has no attention
        (hc.attach(make_model("llama", **small)).skip([0, 1]).skip_mlp([0]), r"attention of block 1, the first"),
        (hc.attach(make_model("gemma2")).skip([1]), r"'gemma2' layers differ.*--format hf"),
        (hc.attach(make_model("phi3")).skip([1]), r"'phi3' layers differ.*--format hf"),
        (hc.attach(make_model("olmo2")).skip([1]), r"'olmo2' layers differ.*--format hf"),
        # helpers/models.py's Mistral attends within 8 tokens of its 256
        (hc.attach(make_model("mistral", **small)).skip([1]), r"sliding window of 8 tokens.*--format hf"),
    ]
    for i, (hs, msg) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(DeciExportError, match=msg):
            export(hs, out, format="deci", tokenizer=tok)
        assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DeciExportError, match="first layer"):
        export(cases[0][0], empty, format="deci", tokenizer=tok)
    assert list(empty.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporary folder left behind either
    # a window as long as the context is no window: accepted (the Mistral case above exports the same way)
    hs = hc.attach(make_model("mistral", **small, sliding_window=256)).skip([1])
    assert (export(hs, tmp_path / "w", format="deci", tokenizer=tok) / "model.safetensors").is_file()
    # layer 0 removed whole, layer 1 attends: accepted, layer 0 has no tensors at all
    hs = hc.attach(make_model("llama", **small)).skip([0]).skip_mlp([0])
    out = export(hs, tmp_path / "whole", format="deci", tokenizer=tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["block_configs"][0]["attention"]["no_op"] and cfg["block_configs"][0]["ffn"]["no_op"]
    assert not [k for k in _header(out / "model.safetensors") if k.startswith("model.layers.0.")]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_export_deci_and_its_refusal(tiny_dir, tmp_path, capsys):
    out = tmp_path / "deci"
    assert cli.main(["export", "--model", str(tiny_dir), "--skip", "1,2", "--format", "deci", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Nemotron-NAS/DeciLM" in printed and "attention skipped [1, 2]" in printed
    assert "note: sglang cannot load this folder" in printed  # tiny_dir's MLP width is 64
    cfg = json.loads((out / "config.json").read_text())
    assert [bc["attention"]["no_op"] for bc in cfg["block_configs"]] == [False, True, True, False]
    names = set(_header(out / "model.safetensors"))
    assert not [n for n in names if ".self_attn." in n and n.startswith(("model.layers.1.", "model.layers.2."))]
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.3.self_attn.o_proj.weight"} <= names
    assert {"configuration_hopscotch_deci.py", "modeling_hopscotch_deci.py", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    rec = read_export(out)
    assert rec["skipped"] == [1, 2] and rec["check"]["rel_diff"] <= 1e-5
    bad = tmp_path / "bad"
    assert cli.main(["export", "--model", str(tiny_dir), "--skip", "0", "--format", "deci", "--out", str(bad)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: attention of block 0, the first layer"), errors
    assert not bad.exists()


# ------------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_default_model_run_exports_as_deci_with_the_attached_logits_and_greedy_chat(default_model, tmp_path):
    """The bundled k = 4 run (blocks 6, 7, 25, 29; channel multipliers, rank-4 deltas) exported from its run folder,
    run by stock transformers from the folder alone, with the folder's chat template."""
    model, tok = default_model
    run = ROOT / "assets" / "example-run-k4"
    out = export(run, tmp_path / "deci", format="deci", model=model, tokenizer=tok)
    rec = read_export(out)
    assert rec["provenance"]["scalars_from"] == "run" and sorted(rec["skipped"]) == [6, 7, 25, 29]
    cfg = json.loads((out / "config.json").read_text())
    assert [i for i, bc in enumerate(cfg["block_configs"]) if bc["attention"]["no_op"]] == [6, 7, 25, 29]
    assert cfg["hopscotch"]["readers"] == {"transformers": "yes (trust_remote_code=True)", "vllm": "yes",
                                           "sglang": "yes"}
    header = _header(out / "model.safetensors")
    assert "lm_head.weight" not in header  # tied: stored once, under the embeddings' name
    assert header == _expected_tensors(_ns(cfg), _reader_layers(_ns(cfg), "vllm"))
    ids = tok("What is 12 * 3? Let me think step by step: 12 * 3 = 36.", return_tensors="pt")["input_ids"]
    prompts = ["What is 7 + 5?", "Name a colour."]
    hs = hc.load_adapter(model, run / "adapter")  # the reference: the attached model, the run's scalars
    try:
        ref = _logits(model, ids)
        chats = []
        for p in prompts:
            pi = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]
            with torch.no_grad():
                g = model.generate(pi, attention_mask=torch.ones_like(pi), max_new_tokens=16, do_sample=False)
            chats.append({"prompt": pi[0].tolist(), "new": g[0, pi.shape[1]:].tolist()})
    finally:
        hs.detach()
    hf_dir = export(run, tmp_path / "hf", format="hf", model=model, tokenizer=tok)
    got = _run_fresh([{"name": "smol", "hf": str(hf_dir), "deci": str(out), "ids": ids.tolist(), "new": 4,
                       "chat": prompts, "chat_new": 16}], tmp_path)["smol"]
    deci = got["deci_logits"].double()
    # measured 8.0e-6 of max |logit| deci vs attached (the fold's eps effect on the real model; the export's own
    # probe: 1.3e-5) and exactly 0 deci vs hf: the bound leaves 10x margin
    assert _rel(ref, deci) <= 1e-4, _rel(ref, deci)
    assert torch.equal(ref.argmax(-1), deci.argmax(-1))
    assert _rel(got["hf_logits"].double(), deci) <= 1e-5
    assert got["chat"] == chats and all(len(c["new"]) > 0 for c in chats)
    assert len(got["deci_cache"]) == 26 and len(got["hf_cache"]) == 30
    assert not [n for n in got["deci_params"] if n.startswith(tuple(f"model.layers.{i}.self_attn." for i in
                                                                    (6, 7, 25, 29)))]
