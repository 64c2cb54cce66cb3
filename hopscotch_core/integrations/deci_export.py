"""Write a Hopscotch model in NVIDIA's Nemotron-NAS / DeciLM layout: skipped attention absent, served with the skip.

vLLM (`vllm/model_executor/models/nemotron_nas.py`) and SGLang (`python/sglang/srt/models/nemotron_nas.py`) serve
this layout natively (registry name DeciLMForCausalLM): a layer whose `block_configs[i].attention.no_op` is true has
no attention module and no KV cache there. Stock transformers runs it through the configuration and modeling files
the folder carries (deci_code/, copied verbatim; `trust_remote_code=True`). All scalars, channel multipliers and
low-rank deltas are folded into the weights first (folding.py), so the folder is a plain model:

    config.json          Llama fields + model_type "nemotron-nas", architectures ["DeciLMForCausalLM"], auto_map,
                         block_configs (one per layer: attention {no_op, replace_with_linear, n_heads_in_group},
                         ffn {no_op, replace_with_linear, ffn_mult}), rope_parameters and the legacy rope_theta /
                         rope_scaling, qkv_bias (Qwen2), hopscotch (skip set, provenance)
    model.safetensors    the stock tensor names (model.layers.N.self_attn.q_proj.weight, ...), without the
                         tensors of no-op blocks
    *.py                 configuration_hopscotch_deci.py, modeling_hopscotch_deci.py
    tokenizer, chat template, generation_config.json

How the readers derive sizes (their code, as read for this writer): KV heads of a layer = num_attention_heads //
n_heads_in_group; MLP width = int(2 * ffn_mult * hidden / 3) rounded up to a multiple of 256 (vLLM also accepts
`intermediate_size` when `ffn_mult` is absent; SGLang reads only `ffn_mult`). vLLM's model config takes the KV head
count from the first layer with attention. Both start each forward with no residual and let the first attention
block set it, so the first layer that computes anything must keep its attention: a skip set that removes it is
refused here (export --format hf or gguf keeps such a model exact).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.families import rope_settings, sliding_window
from ..errors import DeciExportError
from .deci_code.configuration_hopscotch_deci import ffn_width  # the readers' formula, shared with the folder

DECI_FAMILIES = ("llama", "mistral", "qwen2")
MODEL_TYPE = "nemotron-nas"
ARCHITECTURE = "DeciLMForCausalLM"
CODE_DIR = Path(__file__).with_name("deci_code")
CONFIG_FILE = "configuration_hopscotch_deci.py"
MODELING_FILE = "modeling_hopscotch_deci.py"
AUTO_MAP = {"AutoConfig": "configuration_hopscotch_deci.HopscotchDeciConfig",
            "AutoModelForCausalLM": "modeling_hopscotch_deci.DeciLMForCausalLM"}
FFN_ROUND = 256  # the readers round the MLP width derived from ffn_mult up to a multiple of this


def ffn_mult_for(width: int, hidden_size: int) -> float | None:
    """An `ffn_mult` from which the readers derive exactly `width`, or None where none does (width not a multiple
    of 256)."""
    if width % FFN_ROUND:
        return None
    for digits in (4, 6, 8, 12):  # a short decimal where one lands exactly, else the full quotient
        mult = round(3 * width / (2 * hidden_size), digits)
        if ffn_width(mult, hidden_size) == width:
            return mult
    mult = 3 * width / (2 * hidden_size)
    return mult if ffn_width(mult, hidden_size) == width else None


@dataclass(frozen=True)
class DeciPlan:
    """The layout of a deci folder for one handle: which blocks are no-ops and how the sizes are written."""

    family: str
    attention: list[bool]  # per layer: attention computed
    mlp: list[bool]  # per layer: MLP computed
    n_heads_in_group: int
    intermediate_size: int
    ffn_mult: float | None  # None: the MLP width is written as intermediate_size (vLLM reads it, SGLang does not)
    qkv_bias: bool
    attention_bias: bool
    readers: dict[str, str] = field(default_factory=dict)  # runtime -> "yes" or why not

    @property
    def attention_layers(self) -> int:
        return sum(self.attention)


def plan(hs) -> DeciPlan:
    """Check that the deci layout can represent `hs` (a Hopscotch handle) exactly; return its layout."""
    family = hs.family.name
    cfg = hs.model.config.get_text_config()
    if family not in DECI_FAMILIES:
        raise DeciExportError(
            f"the deci format holds Llama-layer models ({', '.join(DECI_FAMILIES)}); '{family}' layers differ "
            "(extra norms, multipliers, fused or normalised projections), which vLLM's and SGLang's nemotron_nas "
            "code does not compute. Export --format hf (a stock checkpoint of this family) instead")
    if getattr(cfg, "partial_rotary_factor", None) not in (None, 1.0):
        raise DeciExportError(f"RoPE over part of each head (partial_rotary_factor {cfg.partial_rotary_factor}) "
                              "is not the Llama attention of the deci layout; export --format hf")
    window = sliding_window(cfg)
    if window is not None:
        raise DeciExportError(f"this model attends within a sliding window of {window} tokens, which the "
                              "deci layout's Llama attention does not; export --format hf")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise DeciExportError(f"the MLP activation {cfg.hidden_act!r} is not the SiLU the serving engines' deci "
                              "MLP computes; export --format hf")
    if getattr(cfg, "mlp_bias", False):
        raise DeciExportError("this model's MLP projections carry biases, which SGLang's deci MLP does not read; "
                              "export --format hf")
    n = hs.num_layers
    att, mlp = set(hs.skipped), set(hs.skipped_mlp)
    attention = [i not in att for i in range(n)]
    mlp_on = [i not in mlp for i in range(n)]
    working = [i for i in range(n) if attention[i] or mlp_on[i]]
    if not working:
        raise DeciExportError("every block is removed; nothing would be left to write")
    if not attention[working[0]]:
        raise DeciExportError(
            f"attention of block {working[0]}, the first layer that computes anything, is skipped: vLLM and SGLang "
            "start the residual stream in the first attention block, so they cannot run such a folder. Keep that "
            "block's attention (or remove its whole layer), or export --format hf (or gguf)")
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % kv:
        raise DeciExportError(f"{heads} query heads do not split evenly over {kv} KV heads")
    width, hidden = int(cfg.intermediate_size), int(cfg.hidden_size)
    mult = ffn_mult_for(width, hidden)
    readers = {"transformers": "yes (trust_remote_code=True)", "vllm": "yes"}
    # vLLM and SGLang put a bias on q/k/v where qkv_bias is set (whatever attention_bias says) and on the output
    # projection where attention_bias is: Qwen2 is (true, false), a Llama with attention_bias (true, true).
    attention_bias = family != "qwen2" and bool(getattr(cfg, "attention_bias", False))
    qkv_bias = family == "qwen2" or attention_bias
    sglang = "yes"
    if mult is None:
        sglang = (f"no: SGLang derives the MLP width only from ffn_mult (a multiple of {FFN_ROUND}), and this "
                  f"model's {width} is not one; vLLM reads the intermediate_size written instead")
    if sglang == "yes" and qkv_bias and not attention_bias:
        sglang = ("no: SGLang's Llama attention (python/sglang/srt/models/llama.py) puts the q/k/v bias on the "
                  "output projection too, which this model lacks; vLLM reads the two apart")
    readers["sglang"] = sglang
    return DeciPlan(family=family, attention=attention, mlp=mlp_on, n_heads_in_group=heads // kv,
                    intermediate_size=width, ffn_mult=mult, qkv_bias=qkv_bias, attention_bias=attention_bias,
                    readers=readers)


def _rope_fields(cfg) -> dict[str, Any]:
    """rope_parameters (transformers 5) and the rope_theta / rope_scaling pair older readers look for (rope_scaling
    only where the RoPE is scaled: transformers 5 warns on the legacy key, and its absence means plain RoPE)."""
    rope = rope_settings(cfg)
    params = {k: v for k, v in rope["params"].items() if k != "type"}
    params.update(rope_theta=rope["theta"], rope_type=rope["type"])
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    out = {"rope_parameters": params, "rope_theta": params["rope_theta"]}
    if scaling.get("rope_type") != "default":  # for readers on transformers 4.x (absent: plain RoPE, their default)
        out["rope_scaling"] = scaling
    return out


def config_dict(hs, layout: DeciPlan, dtype: torch.dtype, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json of the deci folder for handle `hs` laid out as `layout`."""
    cfg = hs.model.config.get_text_config()
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    blocks = []
    for att, mlp in zip(layout.attention, layout.mlp):
        ffn: dict[str, Any] = {"no_op": not mlp, "replace_with_linear": False}
        if not mlp:
            ffn["ffn_mult"] = None
        elif layout.ffn_mult is not None:
            ffn["ffn_mult"] = layout.ffn_mult
        else:  # vLLM reads intermediate_size only where the block has no ffn_mult key at all
            ffn["intermediate_size"] = layout.intermediate_size
        blocks.append({"attention": {"no_op": not att, "replace_with_linear": False,
                                     "n_heads_in_group": layout.n_heads_in_group if att else None},
                       "ffn": ffn})
    tied = bool(getattr(hs.model.config, "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False)))
    out = {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "auto_map": dict(AUTO_MAP),
        "vocab_size": int(cfg.vocab_size), "hidden_size": int(cfg.hidden_size),
        "intermediate_size": layout.intermediate_size, "num_hidden_layers": len(blocks),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(cfg.num_attention_heads) // layout.n_heads_in_group, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": int(getattr(cfg, "max_position_embeddings", 8192)),
        "rms_norm_eps": float(cfg.rms_norm_eps), "initializer_range": float(getattr(cfg, "initializer_range", 0.02)),
        "use_cache": True, "tie_word_embeddings": tied, "attention_bias": layout.attention_bias,
        "qkv_bias": layout.qkv_bias, "mlp_bias": False, "attention_dropout": 0.0,
        **_rope_fields(cfg),
        "bos_token_id": getattr(cfg, "bos_token_id", None), "eos_token_id": getattr(cfg, "eos_token_id", None),
        "pad_token_id": getattr(cfg, "pad_token_id", None),
        "dtype": str(dtype).removeprefix("torch."), "torch_dtype": str(dtype).removeprefix("torch."),
        "block_configs": blocks,
    }
    if extra:
        out["hopscotch"] = extra
    return out


def _absent_prefixes(layout: DeciPlan) -> tuple[str, ...]:
    out = []
    for i, (att, mlp) in enumerate(zip(layout.attention, layout.mlp)):
        if not att:
            out += [f"model.layers.{i}.self_attn.", f"model.layers.{i}.input_layernorm."]
        if not mlp:
            out += [f"model.layers.{i}.mlp.", f"model.layers.{i}.post_attention_layernorm."]
    return tuple(out)


def deci_state(folded, layout: DeciPlan) -> dict[str, torch.Tensor]:
    """The folded model's tensors under their stock names, without those of no-op blocks (tied weights kept under
    both names: the file writer stores shared storage once)."""
    drop = _absent_prefixes(layout)
    return {k: v for k, v in folded.state_dict().items() if not k.startswith(drop)}


def code_module(name: str):
    """One of the files the folder carries, imported from this package (they import only torch/transformers)."""
    import importlib

    return importlib.import_module(f"{__package__}.deci_code.{name.removesuffix('.py')}")


def build_model(config: dict[str, Any], state: dict[str, torch.Tensor]):
    """The deci model of `config` in memory (the folder's own modeling code) around the tensors of `state`, shared,
    not copied: what `from_pretrained(DIR, trust_remote_code=True)` builds from the files."""
    conf_mod, model_mod = code_module(CONFIG_FILE), code_module(MODELING_FILE)
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "auto_map", "hopscotch",
                                                           "torch_dtype")}
    cfg = conf_mod.HopscotchDeciConfig(**fields)
    with torch.device("meta"):
        model = model_mod.DeciLMForCausalLM(cfg)
    full = dict(state)
    if cfg.tie_word_embeddings:
        full.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(full, strict=False, assign=True)
    if missing or unexpected:
        raise DeciExportError(f"the deci model's tensors do not match the folded model's: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]} (please report this)")
    device = state["model.embed_tokens.weight"].device
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device(device):  # its frequencies are a buffer outside the state dict: made here, not on meta
        model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.eval()
    return model


def write_code(folder: Path) -> None:
    for name in (CONFIG_FILE, MODELING_FILE):
        shutil.copyfile(CODE_DIR / name, folder / name)


def write_deci(folded, hs, layout: DeciPlan, folder: Path, tokenizer=None,
               provenance: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Write the deci folder of `folded` (hs folded, see folding.fold_model) into the existing `folder`; returns
    (the deci model in memory, sharing the folded tensors, for the logit check; config.json as written)."""
    from ..engine.checkpoint import WEIGHTS_FILE, unique_tensors, write_safetensors
    from ..engine.loading import _quiet_transformers
    from ..fileio import atomic_write

    dtype = next(folded.parameters()).dtype
    extra = {"skipped": sorted(hs.skipped), "skipped_mlp": sorted(hs.skipped_mlp), "family": layout.family,
             "readers": layout.readers, **(provenance or {})}
    config = config_dict(hs, layout, dtype, extra)
    state = deci_state(folded, layout)
    model = build_model(config, state)
    atomic_write(folder / "config.json", json.dumps(config, indent=2))
    gen = getattr(folded, "generation_config", None)
    if gen is not None:
        atomic_write(folder / "generation_config.json", gen.to_json_string(use_diff=True))
    write_safetensors(folder / WEIGHTS_FILE, unique_tensors(model))
    write_code(folder)
    if tokenizer is not None:
        with _quiet_transformers():
            tokenizer.save_pretrained(folder)
    return model, config


def describe(layout: DeciPlan) -> dict[str, Any]:
    return {**asdict(layout), "attention_layers": layout.attention_layers}
