"""The Hopscotch formula, in one place: the forward that replaces a decoder layer's own.

    x1  = b_att[l] * A(x)  + s_att[l] * x        (A = attention branch, see families.py)
    out = b_mlp[l] * M(x1) + s_mlp[l] * x1       (M = MLP branch)

A skipped attention (or MLP) block is not called at all: x1 = s_att * x (out = s_mlp * x1), and a skipped block's
KV-cache layer only counts tokens (cache.py). The configuration (scalars, channel multipliers, skip sets) comes
from the owner's reader (variant.py), asked once per layer call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .cache import cache_kwarg, record_skipped
from .families import ModelFamily


def _layer_forward(family: ModelFamily, layer: nn.Module, idx: int, owner: Any) -> Callable[..., torch.Tensor]:
    """A forward for decoder layer `idx` implementing the Hopscotch formula.

    `owner` (a Hopscotch handle, or the frozen state of a compact model) gives `_active()`: the reader of the
    configuration this call runs (variant.py: `scales_on(x)` an [L, 4] tensor or per-layer tuples of python
    floats, `channels_on(x)` None or [L, 2, C] multipliers of b_att / b_mlp, `attn_skipped(idx)`,
    `mlp_skipped(idx)`), and holds `_probe`: None, or a callable(idx, x, x1, out) that sees each layer's input,
    mid and output states.
    """
    branch = family.layer
    sig = inspect.signature(type(layer).forward)
    cache_kw = cache_kwarg(layer)
    old_kw = "past_key_values" if cache_kw == "cache" else None

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:  # transformers passes all but hidden_states by name; map stray positionals the stock way
            bound = sig.bind_partial(layer, hidden_states, *args, **kwargs).arguments
            bound.pop("self", None)
            hidden_states = bound.pop("hidden_states")
            kwargs = {**bound.pop("kwargs", {}), **bound}
        if old_kw and old_kw in kwargs and cache_kw not in kwargs:
            kwargs[cache_kw] = kwargs.pop(old_kw)
        x = hidden_states  # (B, T, C)
        cfg = owner._active()
        sc = cfg.scales_on(x)
        b_att, s_att, b_mlp, s_mlp = (sc[idx, 0], sc[idx, 1], sc[idx, 2], sc[idx, 3]) if isinstance(
            sc, torch.Tensor) else sc[idx]
        ch = cfg.channels_on(x)
        if ch is not None:  # (C,) vectors: b ⊙ branch broadcasts over (B, T, C); in the activations' dtype, since a
            # float32 vector would promote bf16 activations to float32 (the parameter itself stays float32)
            b_att, b_mlp = (b_att * ch[idx, 0]).to(x.dtype), (b_mlp * ch[idx, 1]).to(x.dtype)
        if cfg.attn_skipped(idx):
            cache = kwargs.get(cache_kw)
            if cache is not None:
                record_skipped(cache, idx, x)
            x1 = _scaled(s_att, x)
        else:
            x1 = _combine(b_att, branch.attention(layer, x, kwargs), s_att, x)
        if cfg.mlp_skipped(idx):
            out = _scaled(s_mlp, x1)
        else:
            out = _combine(b_mlp, branch.mlp(layer, x1), s_mlp, x1)
        if owner._probe is not None:
            owner._probe(idx, x, x1, out)
        return out

    return forward


def _scaled(s, x: torch.Tensor) -> torch.Tensor:
    return x if (s.__class__ is float and s == 1.0) else s * x


def _combine(b, branch: torch.Tensor, s, residual: torch.Tensor) -> torch.Tensor:
    """b * branch + s * residual, in the activations' dtype (a 0-dim float32 scalar does not promote).

    With python floats (inference snapshot or compact model) it is the stock `residual + branch` where both are
    1, so an all-ones model runs exactly the stock kernels; with tensors (training) it is differentiable.
    """
    if b.__class__ is float:
        if b == 1.0 and s == 1.0:
            return residual + branch
        if s == 1.0:
            return torch.add(residual, branch, alpha=b)
        return torch.add(residual * s, branch, alpha=b)
    return torch.addcmul(s * residual, branch, b)
