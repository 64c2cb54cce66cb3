"""Write a Hopscotch model as a GGUF file that llama.cpp runs with attention-free layers.

llama.cpp's `deci` architecture (the one it uses for Nemotron-51B/Ultra) reads per-layer head counts and
feed-forward sizes: a layer with `attention.head_count` 0 computes no attention and keeps no KV cache, and its
q/k/v/o and attn_norm tensors are absent from the file. Layers that lose both blocks (whole-layer baselines such
as ShortGPT) are dropped from the file. All scalars are folded into the weights first (folding.py), so the file
is a plain deci model:

    layers kept     every layer except those whose attention and MLP are both removed (renumbered)
    per layer       head_count / head_count_kv = 0 where attention is skipped, else the model's
    tensors         token_embd, output_norm, [output], [rope_freqs], blk.N.{attn_norm, attn_q/k/v/output, ffn_norm,
                    ffn_*}; each converted and written on its own after a header made from the shapes
    metadata        general.* as the GGUF spec recommends (name, basename, size_label, finetune "hopscotch-kN",
                    license, base_model.*, tags, quantization_version) and hopscotch.* (skip set, scalars' origin)
    weights         f32, f16 or q8_0 written here (gguf-py); other types through llama.cpp's own quantizer
    tokenizer       copied from the source GGUF (the embedded default model is one), else built from a
                    Hugging Face byte-level BPE tokenizer with gguf-py's vocab helpers

What llama.cpp cannot represent is refused before anything is written: attention skipped in the first layer
written (llama.cpp reads head sizes from it), an MLP removed while its layer's attention stays (llama.cpp would
drop that layer's attention output), families whose layer is not the Llama layer (extra norms, multipliers,
fused projections, q/k norms), RoPE scalings that depend on the sequence length or scale attention (yarn,
dynamic, longrope) and sliding windows. Static RoPE scalings (Llama 3.x's llama3, linear) are written as the
`rope_freqs` tensor llama.cpp divides each frequency by.

Rotary embeddings: Hugging Face Llama-family weights rotate halves of each head (q = [x1, x2] -> [-x2, x1]);
llama.cpp's `deci` rotates adjacent pairs. The q and k rows of every head are therefore reordered from
(half, i) to (i, half), which turns one convention into the other.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.families import rope_settings, sliding_window
from ..errors import GGUFExportError, LlamaCppMissingError

ARCH = "deci"
GGUF_FAMILIES = ("llama", "mistral", "qwen2")
NATIVE_QUANTS = ("f32", "f16", "q8_0")
# quantizations done by llama.cpp's own quantizer (llama_model_quantize) from an f32 file: name -> llama_ftype name
LLAMACPP_QUANTS = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K", "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
QUANTS = NATIVE_QUANTS + tuple(LLAMACPP_QUANTS)

# Hugging Face tokenizer.json pre-tokenizers whose llama.cpp name is known (the regexes of Llama 3 and Qwen2).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


_QUIET_LOG = None


def require_llama_cpp():
    """The llama_cpp module (its own log lines silenced), or LlamaCppMissingError naming the extra."""
    global _QUIET_LOG
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppMissingError(
            "llama-cpp-python is not installed; install the gguf extra: pip install 'hopscotch-studio[gguf]' "
            "(with CMAKE_ARGS=-DGGML_NATIVE=OFF it builds from source in a few minutes)") from None
    if _QUIET_LOG is None:  # loader and quantizer notes go nowhere; failures still surface as return codes
        _QUIET_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_QUIET_LOG, None)
    return llama_cpp


def check_quant(quant: str | None) -> str:
    q = (quant or "f32").lower()
    if q not in QUANTS:
        raise GGUFExportError(f"unknown quantization {quant!r}; use one of {', '.join(QUANTS)}")
    if q in LLAMACPP_QUANTS:
        require_llama_cpp()
    return q


# ------------------------------------------------------------------------------------------------ the plan
# RoPE variants llama.cpp's deci layer cannot compute, and why (anything else not in ROPE_FREQS_TYPES is refused too)
_ROPE_REFUSED = {
    "dynamic": "rescales the frequencies with the sequence length at run time",
    "yarn": "also scales attention by a length-dependent factor",
    "longrope": "switches between two sets of frequency factors by sequence length",
}
ROPE_FREQS_TYPES = ("llama3", "linear")  # static per-frequency factors: llama.cpp's rope_freqs tensor


def rope_freq_factors(cfg, head_dim: int, theta: float) -> np.ndarray:
    """llama.cpp's `rope_freqs` for a static RoPE scaling (llama3, linear): per frequency i, the factor f_i by which
    llama.cpp divides the plain frequency theta^(-2i/d). Taken as the ratio of the plain frequencies to the ones
    transformers itself computes for this config, so the file rotates exactly as the model does."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = rope_settings(cfg)["type"]
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
    if abs(float(attention_factor) - 1.0) > 1e-12:
        raise GGUFExportError(f"RoPE {kind!r} here also scales attention by {attention_factor}, which llama.cpp's "
                              "deci layer does not; export --format hf")
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return (plain / inv_freq.double()).float().numpy()


@dataclass(frozen=True)
class GGUFPlan:
    """The layout of a GGUF file for one handle: the layers written and how their attention and RoPE are set."""

    family: str
    kept: list[int]  # source layers written, in order (a whole removed layer is dropped and the rest renumbered)
    attention: list[bool]  # per written layer: attention computed
    head_dim: int
    rope_theta: float
    rope_type: str
    rope_freqs: np.ndarray | None  # llama.cpp's per-frequency divisors for a static RoPE scaling, else None
    removed_layers: list[int]
    skipped_attention: list[int]


def plan(hs) -> GGUFPlan:
    """Check that llama.cpp can represent `hs` (a Hopscotch handle); return the layout of the file."""
    family = hs.family.name
    cfg = hs.model.config.get_text_config()
    if family not in GGUF_FAMILIES:
        raise GGUFExportError(
            f"GGUF export supports the Llama-layer families {', '.join(GGUF_FAMILIES)}; '{family}' layers "
            "differ from llama.cpp's deci layer (extra norms, multipliers, fused or normalised projections). "
            "Export --format hf for this model")
    rope = rope_settings(cfg)
    if rope["partial"] not in (None, 1.0):
        raise GGUFExportError(f"RoPE over part of each head (partial_rotary_factor {rope['partial']}) is not "
                              "llama.cpp deci's RoPE; export --format hf")
    if rope["type"] != "default" and rope["type"] not in ROPE_FREQS_TYPES:
        why = _ROPE_REFUSED.get(rope["type"], "is not a scaling llama.cpp's deci layer computes")
        raise GGUFExportError(f"RoPE {rope['type']!r} {why}; only plain RoPE and the static scalings "
                              f"{', '.join(ROPE_FREQS_TYPES)} are written to GGUF. Export --format hf for this model")
    window = sliding_window(cfg)
    if window is not None:
        raise GGUFExportError(f"this model attends within a sliding window of {window} tokens, which llama.cpp's "
                              "deci layer does not; export --format hf")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise GGUFExportError(f"the MLP activation {cfg.hidden_act!r} is not llama.cpp deci's SiLU")
    n = hs.num_layers
    att, mlp = set(hs.skipped), set(hs.skipped_mlp)
    half = sorted(mlp - att)
    if half:
        raise GGUFExportError(
            f"the MLP of block(s) {half} is removed while their attention stays; llama.cpp's deci layer would "
            "then drop that attention output too, so the file would be wrong. Remove whole layers (skip both) "
            "or export --format hf")
    kept = [i for i in range(n) if not (i in att and i in mlp)]
    if not kept:
        raise GGUFExportError("every layer is removed; nothing would be left to write")
    if kept[0] in att:
        raise GGUFExportError(
            f"attention of block {kept[0]}, the first layer in the file, is skipped; llama.cpp reads the head "
            "sizes from the first layer and cannot load such a file. Keep that block's attention, or export "
            "--format hf")
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    factors = rope_freq_factors(cfg, head_dim, rope["theta"]) if rope["type"] in ROPE_FREQS_TYPES else None
    return GGUFPlan(family=family, kept=kept, attention=[i not in att for i in kept], head_dim=head_dim,
                    rope_theta=rope["theta"], rope_type=rope["type"], rope_freqs=factors,
                    removed_layers=sorted(att & mlp), skipped_attention=sorted(att - mlp))


# ------------------------------------------------------------------------------------------------ tensors
def _rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k rows of each head from rotate-half order (half, i) to adjacent pairs (i, half)."""
    shape = w.shape
    hd = shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _file_type(t: torch.Tensor, quant: str):
    """(numpy dtype of the data, ggml raw type or None) a tensor takes in a file of type `quant`: 1-D tensors stay
    f32; matrices take the file's type (q8_0 only where rows are whole 32-value blocks)."""
    import gguf

    if t.ndim == 1 or quant == "f32":
        return np.float32, None
    if quant == "f16":
        return np.float16, None
    if t.shape[-1] % 32:
        return np.float32, None
    return np.uint8, gguf.GGMLQuantizationType.Q8_0


def _info(t: torch.Tensor, quant: str) -> tuple[tuple[int, ...], type, int, Any]:
    """(shape as gguf-py's add_tensor_info takes it, numpy dtype, bytes, raw type) without converting anything."""
    import gguf

    dtype, raw = _file_type(t, quant)
    shape = tuple(int(d) for d in t.shape)
    if raw is not None:
        shape = gguf.quants.quant_shape_to_byte_shape(shape, raw)
    return shape, dtype, int(np.prod(shape)) * np.dtype(dtype).itemsize, raw


_CHUNK = 1 << 22  # values quantized at a time: the float32 working copy of a large tensor stays ~16 MB


def _array(t: torch.Tensor, quant: str) -> np.ndarray:
    """The data of one tensor as it goes into the file (converted here, one tensor at a time; q8_0 in row
    chunks, which quantize independently, so a bf16 embedding never exists whole in float32)."""
    import gguf

    dtype, raw = _file_type(t, quant)
    t = t.detach().cpu()
    if raw is None:
        return t.to(torch.float32 if dtype is np.float32 else torch.float16).contiguous().numpy()
    rows = t.reshape(-1, t.shape[-1])
    out = np.empty(gguf.quants.quant_shape_to_byte_shape(tuple(rows.shape), raw), dtype=np.uint8)
    step = max(1, _CHUNK // rows.shape[1])
    for r in range(0, rows.shape[0], step):
        out[r:r + step] = gguf.quants.quantize(rows[r:r + step].to(torch.float32).contiguous().numpy(), raw)
    return out.reshape(gguf.quants.quant_shape_to_byte_shape(tuple(t.shape), raw))


def _tensors(folded, layout: GGUFPlan) -> list[tuple[str, torch.Tensor, int | None]]:
    """(GGUF name, tensor of the folded model, head count whose q/k rows are reordered at write time or None)."""
    cfg = folded.config.get_text_config()
    dec = folded.get_decoder()
    out = [("token_embd.weight", folded.get_input_embeddings().weight, None),
           ("output_norm.weight", dec.norm.weight, None)]
    head = folded.get_output_embeddings().weight
    if head.data_ptr() != folded.get_input_embeddings().weight.data_ptr():
        out.append(("output.weight", head, None))
    n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
    for j, (i, has_attn) in enumerate(zip(layout.kept, layout.attention)):
        layer = dec.layers[i]
        p = f"blk.{j}."
        if has_attn:
            a = layer.self_attn
            out.append((p + "attn_norm.weight", layer.input_layernorm.weight, None))
            for name, mod, heads in (("attn_q", a.q_proj, cfg.num_attention_heads), ("attn_k", a.k_proj, n_kv),
                                     ("attn_v", a.v_proj, None), ("attn_output", a.o_proj, None)):
                for kind in ("weight", "bias"):
                    t = getattr(mod, kind, None)
                    if t is not None:
                        out.append((f"{p}{name}.{kind}", t, heads))
        m = layer.mlp
        out.append((p + "ffn_norm.weight", layer.post_attention_layernorm.weight, None))
        for name, mod in (("ffn_gate", m.gate_proj), ("ffn_up", m.up_proj), ("ffn_down", m.down_proj)):
            for kind in ("weight", "bias"):
                t = getattr(mod, kind, None)
                if t is not None:
                    out.append((f"{p}{name}.{kind}", t, None))
    return out


# ------------------------------------------------------------------------------------------------ tokenizer
def source_gguf(model) -> Path | None:
    """The GGUF file `model` was loaded from, if any (the embedded default model is one)."""
    src = str(getattr(model, "_hopscotch_source", "") or "")
    if src.startswith("default:"):
        from ..engine.loading import default_gguf_path

        return default_gguf_path()
    if src.lower().endswith(".gguf") and Path(src).is_file():
        return Path(src)
    return None


def _copy_tokenizer(writer, path: Path, n_vocab: int) -> str:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in fields:
        raise GGUFExportError(f"{path} holds no tokenizer.ggml.tokens to copy")
    n_tok = len(fields["tokenizer.ggml.tokens"].data)
    if n_tok != n_vocab:
        raise GGUFExportError(f"{path} has {n_tok} tokens but the model's embedding has {n_vocab} rows: "
                              "not the same model's tokenizer")
    for key, f in fields.items():
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), vtype, sub_type=sub)
    return f"copied from {path.name}"


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    if not pre:
        return None
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and items[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
        regex = (items[0].get("pattern") or {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(regex)
    return None


def _build_tokenizer(writer, tokenizer, n_vocab: int) -> str:
    """tokenizer.* keys for a Hugging Face byte-level BPE tokenizer, with gguf-py's vocab helpers."""
    import gguf
    from gguf.vocab import BpeVocab, SpecialVocab

    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise GGUFExportError("the model came without a GGUF and without a fast Hugging Face tokenizer, so its "
                              "llama.cpp tokenizer cannot be written; pass tokenizer_gguf= (CLI --tokenizer-gguf) "
                              "a GGUF of the same model, whose tokenizer.* keys are copied")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        data = json.loads((Path(tmp) / "tokenizer.json").read_text())
        model = data.get("model") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback") or \
                (data.get("decoder") or {}).get("type") != "ByteLevel":
            raise GGUFExportError(
                f"the tokenizer is a {model.get('type')} model (decoder {(data.get('decoder') or {}).get('type')}); "
                "only byte-level BPE tokenizers are written from Hugging Face files; pass tokenizer_gguf= "
                "(CLI --tokenizer-gguf) a GGUF of the same model")
        pre = _pre_tokenizer_name(data.get("pre_tokenizer"))
        if pre is None:
            raise GGUFExportError(
                "cannot tell which llama.cpp pre-tokenizer matches this tokenizer's pre_tokenizer "
                f"{json.dumps(data.get('pre_tokenizer'))[:160]}; pass tokenizer_gguf= (CLI --tokenizer-gguf) a "
                "GGUF of the same model, whose tokenizer.* keys are copied")
        vocab = BpeVocab(Path(tmp))
        special = {a["content"] for a in data.get("added_tokens") or [] if a.get("special")}
        added = {a["content"] for a in data.get("added_tokens") or []}
        tokens, types = [], []
        for text, _score, _ttype in vocab.all_tokens():
            t = text.decode("utf-8") if isinstance(text, bytes) else text
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if t in special else
                         gguf.TokenType.USER_DEFINED if t in added else gguf.TokenType.NORMAL)
        if len(tokens) > n_vocab:
            raise GGUFExportError(f"the tokenizer has {len(tokens)} tokens but the embedding only {n_vocab} rows")
        for i in range(len(tokens), n_vocab):  # embedding rows without a token (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        sv = SpecialVocab(Path(tmp), load_merges=True, n_vocab=n_vocab)
        template = getattr(tokenizer, "chat_template", None)
        sv.chat_template = None
        sv.add_to_gguf(writer, quiet=True)
        if isinstance(template, str):
            writer.add_chat_template(template)
    return f"built from the Hugging Face tokenizer (byte-level BPE, pre-tokenizer {pre})"


# ------------------------------------------------------------------------------------------------ metadata
TAGS = ("hopscotch", "attention-pruned")
_SIZE_TOKEN = re.compile(r"[-_ ](\d+(\.\d+)?[KMBT])(?=$|[-_ ])", re.IGNORECASE)


def source_info(model) -> dict[str, str]:
    """What is known of the model's origin: name, basename, organization, license, repo_url (keys present only
    when known), from the source GGUF's general.* keys, the model card of a local folder, or the Hub id."""
    from ..engine.loading import DEFAULT_NAME

    src = str(getattr(model, "_hopscotch_source", "") or getattr(model.config, "_name_or_path", "") or "")
    info: dict[str, str] = {}
    gpath = source_gguf(model)
    if gpath is not None:
        import gguf

        fields = gguf.GGUFReader(str(gpath)).fields
        for key in ("name", "basename", "organization", "license", "repo_url"):
            f = fields.get(f"general.{key}")
            if f is not None:
                info[key] = str(f.contents())
    if src.startswith("default:"):
        info["name"] = DEFAULT_NAME
        if "organization" in info:
            info["repo_url"] = f"https://huggingface.co/{info['organization']}/{DEFAULT_NAME}"
    elif src and Path(src).is_dir():
        info["name"] = Path(src).name
        card = Path(src) / "README.md"
        if card.is_file() and "license" not in info:
            m = re.search(r"^---\s*$(.*?)^---\s*$", card.read_text(errors="replace"), re.M | re.S)
            lic = re.search(r"^license:\s*['\"]?([\w.\-]+)", m.group(1), re.M) if m else None
            if lic:
                info["license"] = lic.group(1)
    elif src and gpath is None and "/" in src and not src.startswith(("/", ".", "~")):
        info.update(name=src.split("/")[-1], organization=src.split("/")[0], repo_url=f"https://huggingface.co/{src}")
    elif src and gpath is None:
        info["name"] = Path(src).name
    if "name" in info and "basename" not in info:
        m = _SIZE_TOKEN.search(info["name"])
        info["basename"] = info["name"][:m.start()] if m and m.start() > 0 else info["name"]
    return info


def gguf_name(info: dict[str, str], skipped: int, n_params: int, quant: str) -> tuple[str, str, str]:
    """(file name, size label, finetune) by the GGUF naming convention <BaseName>-<SizeLabel>-<FineTune>-<Type>."""
    import gguf

    size = gguf.utility.size_label(n_params, 0, 0, 0)
    finetune = f"hopscotch-k{skipped}"
    stem = gguf.utility.naming_convention(None, info.get("basename") or "model", finetune, None, size, quant.upper())
    return f"{stem}.gguf"[:200], size, finetune


def file_name(hs, quant: str) -> str:
    """The file name write_gguf's metadata describes, e.g. smollm2-128M-hopscotch-k7-F16.gguf."""
    layout = plan(hs)
    n_params = sum(t.numel() for _, t, _ in _tensors(hs.model, layout))
    return gguf_name(source_info(hs.model), len(hs.skipped), n_params, check_quant(quant))[0]


def _write_metadata(w, hs, layout: dict, quant: str, n_params: int, provenance: dict | None) -> dict[str, Any]:
    import gguf

    from .. import __version__

    info = source_info(hs.model)
    k = len(hs.skipped)
    _, size, finetune = gguf_name(info, k, n_params, quant)
    base = info.get("name") or "model"
    w.add_name(f"{base} (Hopscotch: {k} attention blocks skipped)")
    w.add_basename(info.get("basename") or "model")
    w.add_size_label(size)
    w.add_finetune(finetune)
    if info.get("license"):
        w.add_license(info["license"])
    w.add_base_model_count(1)
    w.add_base_model_name(0, base)
    if info.get("organization"):
        w.add_base_model_organization(0, info["organization"])
    if info.get("repo_url"):
        w.add_base_model_repo_url(0, info["repo_url"])
    w.add_tags(list(TAGS))
    if quant == "q8_0":  # the spec asks for it whenever a tensor is quantized
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    record = {"source": str(getattr(hs.model, "_hopscotch_source", None) or "model"),
              "skipped_attention": layout.skipped_attention, "removed_layers": layout.removed_layers,
              "kept_layers": layout.kept, "scales": hs.effective_scales().tolist(),
              "granularity": hs.granularity, "lora_rank": int(hs.lora_rank), "rope_type": layout.rope_type,
              "hopscotch_version": __version__, **(provenance or {})}
    # llama.cpp ignores keys it does not know; hopscotch.* tells what was done to the base model
    w.add_string("hopscotch.export", json.dumps(record))
    w.add_string("hopscotch.skipped_attention", ",".join(str(i) for i in hs.skipped))  # original block indices
    w.add_string("hopscotch.source", record["source"])
    w.add_string("hopscotch.version", __version__)
    return {"name": f"{base} (Hopscotch: {k} attention blocks skipped)", "size_label": size, "finetune": finetune,
            **{key: info[key] for key in ("license", "organization", "repo_url") if key in info}}


# ------------------------------------------------------------------------------------------------ writer
def write_gguf(hs, path: str | os.PathLike, quant: str = "f32", tokenizer=None,
               tokenizer_gguf: str | os.PathLike | None = None,
               on_progress: Callable[[int, int, dict], None] | None = None,
               provenance: dict | None = None) -> dict[str, Any]:
    """Write `hs` (a Hopscotch handle: skip set + scalars) as one llama.cpp GGUF file at `path`.

    Memory: the fold copies only the weights it changes (folding.fold_model(share=True)), the header is written
    from the tensors' shapes first and each tensor is then converted and written on its own, so the export needs
    about the changed weights plus one tensor beyond the model itself. Returns what was written (layers, tensors,
    type, tokenizer source, metadata). Raises GGUFExportError before writing anything when llama.cpp cannot
    represent the model (see module docstring).
    """
    import gguf

    from ..engine.folding import fold_model

    q = check_quant(quant)
    layout = plan(hs)
    tok_src = Path(tokenizer_gguf) if tokenizer_gguf else source_gguf(hs.model)
    if tok_src is not None and not tok_src.is_file():
        raise GGUFExportError(f"tokenizer GGUF {tok_src} does not exist")
    folded = fold_model(hs, share=True)
    cfg = folded.config.get_text_config()
    path = Path(path)
    native = q if q in NATIVE_QUANTS else "f32"
    target = path if q == native else path.with_name(path.name + ".f32.tmp")
    n_vocab = folded.get_input_embeddings().weight.shape[0]
    tensors = _tensors(folded, layout)
    n_params = sum(t.numel() for _, t, _ in tensors)
    w = gguf.GGUFWriter(str(target), ARCH)
    try:
        meta = _write_metadata(w, hs, layout, q, n_params, provenance)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[native])
        n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        w.add_context_length(int(cfg.max_position_embeddings))
        w.add_embedding_length(int(cfg.hidden_size))
        w.add_block_count(len(layout.kept))
        w.add_feed_forward_length([int(cfg.intermediate_size)] * len(layout.kept))
        w.add_head_count([int(cfg.num_attention_heads) if a else 0 for a in layout.attention])
        w.add_head_count_kv([int(n_kv) if a else 0 for a in layout.attention])
        w.add_key_length(layout.head_dim)
        w.add_value_length(layout.head_dim)
        w.add_rope_dimension_count(layout.head_dim)
        w.add_rope_freq_base(layout.rope_theta)
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(int(n_vocab))
        tok_info = _copy_tokenizer(w, tok_src, n_vocab) if tok_src else _build_tokenizer(w, tokenizer, n_vocab)
        if layout.rope_freqs is not None:  # llama.cpp divides each RoPE frequency by its factor
            freqs = torch.from_numpy(layout.rope_freqs)
            tensors.insert(0, ("rope_freqs.weight", freqs, None))
        for name, t, _ in tensors:
            shape, dtype, nbytes, raw = _info(t, native)
            w.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, (name, t, heads) in enumerate(tensors):
            w.write_tensor_data(_array(_rope_rows(t, heads) if heads else t, native))
            if on_progress:
                on_progress(i + 1, len(tensors), {"stage": "gguf", "tensor": name})
    finally:
        w.close()
        del folded
    if q != native:
        try:
            _llamacpp_quantize(target, path, q)
        finally:
            target.unlink(missing_ok=True)
    return {"quant": q, "layers": len(layout.kept), "skipped_attention": layout.skipped_attention,
            "removed_layers": layout.removed_layers, "tensors": len(tensors), "tokenizer": tok_info,
            "rope_type": layout.rope_type, "metadata": meta, "bytes": path.stat().st_size}


def _llamacpp_quantize(src: Path, dst: Path, quant: str) -> None:
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMACPP_QUANTS[quant])
    params.nthread = max(1, min(2, os.cpu_count() or 1))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise GGUFExportError(f"llama.cpp could not quantize {src.name} to {quant} (return code {rc})")
