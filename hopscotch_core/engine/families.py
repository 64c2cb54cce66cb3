"""Model families: where a decoder family keeps its layers, attention, MLP and norms.

Hopscotch rewrites every decoder layer as

    x1  = b_att * A(x)  + s_att * x          A(x): the attention branch, as the family computes it
    out = b_mlp * M(x1) + s_mlp * x1         M(x): the MLP branch

A family says what A and M are, i.e. everything the stock layer does to the residual stream
except the two residual sums. For pre-norm families that is `attn(norm(x))`; Gemma 2/3 add a norm after each
sublayer, OLMo 2 normalises the sublayer output instead of its input, Granite multiplies the branch by
`residual_multiplier` and Phi-3 wraps it in a (train-time) dropout. The scalars therefore always multiply the
sublayer output and the residual exactly where they enter the sum.

Adding a family = one small subclass below + its name in `_FAMILIES` + one tiny config in tests/helpers/models.py
(the shared family tests then check the formula, the cache matrix and compaction for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError


class LayerFamily:
    """How one family's decoder layer computes its two residual branches (pre-norm, Llama-style by default)."""

    attn_name = "self_attn"
    mlp_name = "mlp"
    # (module path inside the layer, kind) of the last op of each branch, used to fold b_att / b_mlp into weights.
    # kind "linear": y = W x (+ b) -> scale W and b.  kind "rmsnorm": y = w * n(x) -> scale w.
    # kind "rmsnorm_plus1": y = (1 + w) * n(x) -> w' = b (1 + w) - 1.
    attn_out: tuple[str, str] = ("self_attn.o_proj", "linear")
    mlp_out: tuple[str, str] = ("mlp.down_proj", "linear")
    # the projections low-rank healing adapts (lowrank.py): the last linear map of each branch; None where a
    # family has no such linear layer (then --lora-rank is refused for it)
    attn_delta: str | None = "self_attn.o_proj"
    mlp_delta: str | None = "mlp.down_proj"
    # (path, kind) of the norm through which each branch reads the residual stream, or None where the branch
    # reads the raw stream (OLMo 2). A scale-invariant norm there lets a residual scale be folded (export.py).
    attn_in_norm: tuple[str, str] | None = ("input_layernorm", "rmsnorm")
    mlp_in_norm: tuple[str, str] | None = ("post_attention_layernorm", "rmsnorm")
    final_norm_kind = "rmsnorm"  # the decoder's final norm (`model.model.norm`)

    def attention(self, layer: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = layer.self_attn(hidden_states=layer.input_layernorm(x), **kwargs)[0]
        return out

    def mlp(self, layer: nn.Module, x1: torch.Tensor) -> torch.Tensor:
        return layer.mlp(layer.post_attention_layernorm(x1))

    def required(self) -> tuple[str, ...]:
        return ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")


class GraniteFamily(LayerFamily):
    """Granite scales each branch by config.residual_multiplier before the residual sum."""

    def attention(self, layer, x, kwargs):
        return super().attention(layer, x, kwargs) * layer.residual_multiplier

    def mlp(self, layer, x1):
        return super().mlp(layer, x1) * layer.residual_multiplier

    def required(self):
        return super().required() + ("residual_multiplier",)


class Phi3Family(LayerFamily):
    """Phi-3 applies a residual dropout (identity in eval mode) to each branch."""

    def attention(self, layer, x, kwargs):
        return layer.resid_attn_dropout(super().attention(layer, x, kwargs))

    def mlp(self, layer, x1):
        return layer.resid_mlp_dropout(super().mlp(layer, x1))


class GemmaFamily(LayerFamily):
    """Gemma 2/3: pre- and post-norm around both sublayers; norm weight enters as (1 + w)."""

    attn_out = ("post_attention_layernorm", "rmsnorm_plus1")
    mlp_out = ("post_feedforward_layernorm", "rmsnorm_plus1")
    attn_in_norm = ("input_layernorm", "rmsnorm_plus1")
    mlp_in_norm = ("pre_feedforward_layernorm", "rmsnorm_plus1")
    final_norm_kind = "rmsnorm_plus1"

    def attention(self, layer, x, kwargs):
        out = layer.self_attn(hidden_states=layer.input_layernorm(x), **kwargs)[0]
        return layer.post_attention_layernorm(out)

    def mlp(self, layer, x1):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x1)))

    def required(self):
        return super().required() + ("pre_feedforward_layernorm", "post_feedforward_layernorm")


class Olmo2Family(LayerFamily):
    """OLMo 2 normalises each sublayer's output (no input norm)."""

    attn_out = ("post_attention_layernorm", "rmsnorm")
    mlp_out = ("post_feedforward_layernorm", "rmsnorm")
    attn_in_norm = None
    mlp_in_norm = None

    def attention(self, layer, x, kwargs):
        return layer.post_attention_layernorm(layer.self_attn(hidden_states=x, **kwargs)[0])

    def mlp(self, layer, x1):
        return layer.post_feedforward_layernorm(layer.mlp(x1))

    def required(self):
        return ("self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm")


_FAMILIES: dict[str, type[LayerFamily]] = {
    "llama": LayerFamily,
    "mistral": LayerFamily,
    "qwen2": LayerFamily,
    "qwen3": LayerFamily,
    "granite": GraniteFamily,
    "phi3": Phi3Family,
    "gemma2": GemmaFamily,
    "gemma3_text": GemmaFamily,
    "olmo2": Olmo2Family,
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_FAMILIES))


@dataclass
class ModelFamily:
    """A causal LM seen through its family."""

    model: nn.Module
    name: str  # the model_type, e.g. "llama"
    layer: LayerFamily

    @property
    def layers(self) -> nn.ModuleList:
        return _decoder(self.model).layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def text_config(self):
        return self.model.config.get_text_config()


def _decoder(model: nn.Module) -> nn.Module:
    dec = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if dec is None or not isinstance(getattr(dec, "layers", None), nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no decoder with a `layers` list; load it with AutoModelForCausalLM."
        )
    return dec


def get_family(model: nn.Module) -> ModelFamily:
    """The family of `model`, or UnsupportedArchitectureError naming the supported families."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is not a transformers model (no .config); supported families: "
            + ", ".join(SUPPORTED_FAMILIES)
        )
    family = config.get_text_config().model_type
    cls = _FAMILIES.get(family)
    if cls is None:
        raise UnsupportedArchitectureError(
            f"model family '{family}' ({type(model).__name__}) is not supported; supported families: "
            + ", ".join(SUPPORTED_FAMILIES)
        )
    found = ModelFamily(model, family, cls())
    for i, layer in enumerate(found.layers):
        missing = [n for n in found.layer.required() if not hasattr(layer, n)]
        if missing:
            raise UnsupportedArchitectureError(
                f"layer {i} of this '{family}' model ({type(layer).__name__}) lacks {missing}; "
                "its transformers version may lay the layer out differently"
            )
    return found


# The name this had before "adapter" came to mean only the saved scalars; part of the public API.
get_adapter = get_family


def fold_scale(layer: nn.Module, target: tuple[str, str], scale: float | torch.Tensor) -> None:
    """Multiply the output of the module at `target` by `scale`, in its weights (exact up to rounding).

    `scale` is a number, or a vector over the output channels (granularity "channel"): a linear layer's rows
    (and bias) and a norm's per-channel weight each scale one output channel."""
    path, kind = target
    mod = layer.get_submodule(path)
    with torch.no_grad():
        if isinstance(scale, torch.Tensor):
            scale = scale.to(device=mod.weight.device, dtype=torch.float64)
        if kind == "linear":
            w = mod.weight
            w.copy_(w.double() * (scale[:, None] if isinstance(scale, torch.Tensor) else scale))
            if getattr(mod, "bias", None) is not None:
                mod.bias.copy_(mod.bias.double() * scale)
        elif kind == "rmsnorm":
            mod.weight.copy_(mod.weight.double() * scale)
        elif kind == "rmsnorm_plus1":
            mod.weight.copy_((1.0 + mod.weight.double()) * scale - 1.0)
        else:  # pragma: no cover - families only declare the kinds above
            raise ValueError(kind)


def negate_norm(module: nn.Module, kind: str) -> None:
    """Make a norm's output the negative of what it was (fold a negative residual scale through it)."""
    with torch.no_grad():
        if kind == "rmsnorm":
            module.weight.neg_()
        elif kind == "rmsnorm_plus1":  # (1 + w') = -(1 + w)
            module.weight.copy_(-2.0 - module.weight.float())
        else:  # pragma: no cover
            raise ValueError(kind)


def final_norm(model: nn.Module) -> nn.Module:
    """The decoder's norm before the output head."""
    return _decoder(model).norm


Forward = Callable[..., torch.Tensor]


def rope_settings(cfg) -> dict:
    """A text config's RoPE as one dict, whichever way the config spells it (transformers 5's rope_parameters, or the
    legacy rope_theta / rope_scaling pair): theta, type ("default" for plain RoPE), partial rotary factor, and
    the merged parameters (rope_parameters winning over rope_scaling)."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    legacy = getattr(cfg, "rope_scaling", None)
    if isinstance(legacy, dict):
        params = {**legacy, **params}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    kind = params.get("rope_type", params.get("type", "default"))
    return {"theta": float(theta if theta is not None else 10000.0), "type": kind or "default",
            "partial": params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)),
            "params": params}


def sliding_window(cfg) -> int | None:
    """The window a text config's attention is limited to, or None where it attends over the whole context (no
    window, use_sliding_window off, or a window no shorter than the model's positions)."""
    window = getattr(cfg, "sliding_window", None)
    if window is None or not getattr(cfg, "use_sliding_window", True):
        return None
    return window if window < getattr(cfg, "max_position_embeddings", window + 1) else None
