"""Compaction: a copy of the model without the skipped blocks' weights, computing what the handle computes.

A compact model keeps the stock module tree, with `RemovedBlock` (no parameters) where a skipped block's attention
(or MLP) was, and its layers run the Hopscotch formula (formula.py) with frozen scalars: `CompactInfo`, kept on the
model and written by `save_model`. With fold=True, b_att and b_mlp (times their channel multipliers) are multiplied
into the last weight of their branch (o_proj/down_proj, or the post-norm for Gemma/OLMo 2), exact up to rounding;
s_att and s_mlp stay as constants. Low-rank deltas always merge into the copy's weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from . import artifacts, lowrank
from .families import fold_scale, get_family
from .formula import _layer_forward
from .variant import Fixed, _as_blocks, check_channel_scales
from ..errors import InvalidScalesError

_COMPACT_ATTR = "_hopscotch_compact"


class RemovedBlock(nn.Module):
    """Stands where a compacted layer's attention (or MLP) was: no parameters, never called."""

    def __init__(self, layer_idx: int, name: str = "self_attn"):
        super().__init__()
        self.layer_idx, self.name = layer_idx, name

    def forward(self, *args: Any, **kwargs: Any):
        raise RuntimeError(f"{self.name} of block {self.layer_idx} was removed by Hopscotch compaction")


class CompactInfo:
    """The frozen Hopscotch state of a compacted model (its layers' forward reads it; save_model writes it).
    `channel_scales`: per-channel b multipliers not folded into weights (fold=False), or None."""

    def __init__(self, scales: torch.Tensor, skipped: tuple[int, ...], skipped_mlp: tuple[int, ...], base: dict,
                 folded: bool, channel_scales: torch.Tensor | None = None):
        self.scales, self.skipped, self.skipped_mlp, self.base, self.folded = (
            scales, skipped, skipped_mlp, base, folded)
        self.channel_scales = channel_scales
        # what the layers read: python floats (the stock kernels where a scalar is 1), the skip sets, the multipliers
        self._fixed = Fixed(skipped, skipped_mlp, [tuple(float(v) for v in row) for row in scales], channel_scales)
        self._probe = None

    def _active(self) -> Fixed:
        return self._fixed


def install_compact(
    model: nn.Module, scales: torch.Tensor, skipped: Iterable[int], base: dict, fold: bool = True,
    skipped_mlp: Iterable[int] = (), channel_scales: torch.Tensor | None = None,
) -> nn.Module:
    """Turn `model` (in place) into a compact Hopscotch model with frozen `scales` (and per-channel b
    multipliers `channel_scales` [L, 2, hidden], granularity "channel") and removed blocks."""
    family = get_family(model)
    n = family.num_layers
    skipped = tuple(sorted(_as_blocks(list(skipped), n)))
    skipped_mlp = tuple(sorted(_as_blocks(list(skipped_mlp), n)))
    scales = scales.detach().float().cpu().clone()
    if scales.shape != (n, 4) or not torch.isfinite(scales).all():
        raise InvalidScalesError(f"compact scales must be finite with shape ({n}, 4)")
    layers = family.layers
    for blocks, name in ((skipped, family.layer.attn_name), (skipped_mlp, family.layer.mlp_name)):
        for i in blocks:
            if not isinstance(getattr(layers[i], name), RemovedBlock):
                setattr(layers[i], name, RemovedBlock(i, name))
    hidden = int(family.text_config.hidden_size)
    ch = None if channel_scales is None else check_channel_scales(channel_scales, n, hidden).clone()
    if fold:
        for i, layer in enumerate(layers):
            for col, c, blocks, target in ((0, 0, skipped, family.layer.attn_out),
                                           (2, 1, skipped_mlp, family.layer.mlp_out)):
                if i in blocks:
                    continue
                if ch is not None and not bool((ch[i, c] == 1.0).all()):
                    fold_scale(layer, target, ch[i, c] * scales[i, col])  # per output channel
                elif scales[i, col] != 1.0:
                    fold_scale(layer, target, float(scales[i, col]))
                scales[i, col] = 1.0
        ch = None
    scales[list(skipped), 0] = 0.0
    scales[list(skipped_mlp), 2] = 0.0
    info = CompactInfo(scales, skipped, skipped_mlp, base, fold, ch)
    for i, layer in enumerate(layers):
        vars(layer).pop("forward", None)
        layer.forward = _layer_forward(family, layer, i, info)
    setattr(model, _COMPACT_ATTR, info)
    return model


def compact_info(model: nn.Module) -> CompactInfo | None:
    return getattr(model, _COMPACT_ATTR, None)


def compact(hs, fold: bool = True, share: bool = False) -> nn.Module:
    """Hopscotch.compact's work (see there): a new model without `hs`'s skipped blocks' weights."""
    family, layers = hs.family, hs.family.layers
    names = {0: family.layer.attn_name, 2: family.layer.mlp_name}
    kept: list[tuple[int, str, nn.Module]] = []
    with hs._bare():
        try:
            for col, blocks in hs._skips.items():
                for i in blocks:
                    kept.append((i, names[col], getattr(layers[i], names[col])))
                    setattr(layers[i], names[col], RemovedBlock(i, names[col]))
            if share:
                from .folding import share_copy

                targets = [family.layer.attn_out[0], family.layer.mlp_out[0]] if fold else []
                changed = [layers[i].get_submodule(t) for i in range(hs.num_layers) for t in targets
                           if not isinstance(getattr(layers[i], t.split(".")[0], None), RemovedBlock)]
                if hs.lora_rank:
                    changed += [layers[s.layer].get_submodule(s.path) for s in hs._slots()
                                if s.layer not in (hs.skipped if s.part == "attn" else hs.skipped_mlp)]
                new = share_copy(hs.model, changed)
            else:
                new = copy.deepcopy(hs.model)
        finally:
            for i, name, module in kept:
                setattr(layers[i], name, module)
    if not share:  # shared tensors are the attached model's: their flags stay the handle's
        for name, p in new.named_parameters():
            p.requires_grad_(hs._grad_flags.get(name, True))
    if hs.lora_rank:  # deltas always merge into the copy's weights (exact up to rounding)
        lowrank.merge(get_family(new).layers, hs._slots(), hs.lora, hs.lora_rank, hs.skipped, hs.skipped_mlp)
    identity = artifacts.model_identity(hs.model)
    install_compact(new, hs.effective_scales(), hs.skipped, identity, fold=fold,
                    skipped_mlp=hs.skipped_mlp, channel_scales=hs.effective_channel_scales())
    return new
