"""Architecture summary and the FLOP model: what a skipped attention block saves, at best.

    from hopscotch_core.measure.info import summary, flops_per_token
    summary(model)                                  # layers, heads, parameters, attention share
    flops_per_token(model, context=512, skipped=(3, 7))

FLOPs count 2 per multiply-add of every matmul a token goes through: the linear layers (2 x their parameter count)
plus attention's QK^T and AV against `context` cached positions (4 x context x heads x head_dim per layer, or the
window for sliding layers). Norms, activations and softmax are ignored; they are a few percent on these models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..engine.families import get_family
from ..engine.loading import weights_stamp, write_derived
from ..engine.scaling import RemovedBlock
from .cached import cached_summary  # noqa: F401  (re-exported: read without torch there)


def _linear_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def summary(model: nn.Module) -> dict[str, Any]:
    """Family, sizes, parameter and FLOP shares of attention; also kept on disk for cached_summary()."""
    out = _summary(model)
    write_derived("summary", weights_stamp(model), out)
    return out


def _summary(model: nn.Module) -> dict[str, Any]:
    ad = get_family(model)
    cfg = ad.text_config
    layers = ad.layers
    attn = [sum(p.numel() for p in layer.self_attn.parameters()) for layer in layers]
    total = sum(p.numel() for p in model.parameters())
    removed = [i for i, layer in enumerate(layers) if isinstance(layer.self_attn, RemovedBlock)]
    per_layer_attn = max(attn) if attn else 0
    return {
        "family": ad.name,
        "layers": ad.num_layers,
        "hidden_size": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": _head_dim(cfg),
        "parameters": total,
        "attention_parameters": sum(attn),
        "attention_parameter_share": sum(attn) / total if total else 0.0,
        "attention_parameters_per_layer": per_layer_attn,
        "removed_attention_blocks": removed,
        "flops_per_token_ctx512": flops_per_token(model, 512),
        "attention_flop_share_ctx512": attention_flop_share(model, 512),
    }


def _layer_flops(model: nn.Module, context: int) -> list[tuple[float, float]]:
    """Per layer: (attention FLOPs, MLP FLOPs) for one token attending to `context` positions."""
    ad = get_family(model)
    cfg = ad.text_config
    heads, hd = cfg.num_attention_heads, _head_dim(cfg)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    out = []
    for i, layer in enumerate(ad.layers):
        sliding = bool(window) and (types is None or types[i] == "sliding_attention")
        ctx = min(context, window) if sliding else context
        attn = 2 * _linear_params(layer.self_attn) + 4 * ctx * heads * hd
        if isinstance(layer.self_attn, RemovedBlock):  # compacted away
            attn = 0.0
        out.append((float(attn), float(2 * _linear_params(getattr(layer, ad.layer.mlp_name)))))
    return out


def flops_per_token(model: nn.Module, context: int, skipped: Iterable[int] = ()) -> float:
    skipped = set(skipped)
    per = _layer_flops(model, context)
    head = 2 * model.get_output_embeddings().weight.numel()
    return head + sum(m + (0 if i in skipped else a) for i, (a, m) in enumerate(per))


def attention_flop_share(model: nn.Module, context: int) -> float:
    per = _layer_flops(model, context)
    return sum(a for a, _ in per) / flops_per_token(model, context)


def speedup_bound(model: nn.Module, context: int, skipped: Iterable[int]) -> float:
    """Best possible speed-up from skipping `skipped` if time were proportional to FLOPs."""
    return flops_per_token(model, context) / flops_per_token(model, context, skipped)
