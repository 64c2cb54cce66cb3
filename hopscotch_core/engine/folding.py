"""Fold every Hopscotch scalar into ordinary weights: a plain checkpoint of the original architecture.

A layer with scalars computes (families.py)

    x1  = b_a * A(x)  + s_a * x         A(x) = o_proj(attn(N1(x)))    N1, N2: the norms each branch reads
    out = b_m * M(x1) + s_m * x1        M(y) = down_proj(mlp(N2(y)))

and a stock layer computes the same with b = s = 1. The residual scalars s have no stock counterpart, but a
pre-norm layer only sees its input through a norm, and norms are scale-invariant:

    RMSNorm(c x) = c x / sqrt(c^2 mean(x^2) + eps) * w = sign(c) * x / sqrt(mean(x^2) + eps / c^2) * w

(LayerNorm likewise, with the variance). So carry a *running residual scale* c: write the original residual
stream as h = c * h', with c = 1 on the embeddings. If layer l gets h = c h' then

    x1  = b_a A(c h') + s_a c h'  = c1 * (h' + (b_a / c1) A(h'))       c1 = s_a * c
    out = b_m M(c1 x1') + s_m c1 x1' = c2 * (x1' + (b_m / c2) M(x1'))    c2 = s_m * c1

which is a stock layer on h' whose output projections are multiplied by b_a / c1 and b_m / c2 (and whose input
norms are negated where c or c1 is negative). After the last layer, the final norm removes c the same way, so
the logits are unchanged. Low-rank deltas (lowrank.py) sit inside the branches, on the projection the b's fold
into, so they merge first (W + B A) and the scaling above then applies to the merged weight. A skipped block has b = 0: its output projection becomes zero, so this format still
computes the block (it exists for portability: vLLM, TGI, any Hugging Face tool); the compact and GGUF formats
drop it instead.

Epsilon. The folded norm at a point where the stream scale is c computes x' / sqrt(mean(x'^2) + eps) where the
attached model computes x' / sqrt(mean(x'^2) + eps / c^2): the relative change of that norm's output is

    |sqrt((m + eps/c^2) / (m + eps)) - 1|  <=  eps * |1 - 1/c^2| / (2 m)          m = mean(x'^2) of that token

so it vanishes where c = 1 (all s = 1: the fold is exact up to float rounding) and is negligible where the
hidden states' mean square is far above eps (eps ~ 1e-5 to 1e-6; trained LMs have m of order 1 and above). The
export records the bound it measured (`max_eps_effect`) and the logit difference on a probe input.

Not foldable, refused with the reason: a stream scale of 0 (an s of 0 makes the stream vanish), and s != 1 in a
family whose branches read the raw stream (OLMo 2 normalises the branch output, not its input; its b still folds,
into the post-norm, so an all-s-ones OLMo 2 export is exact).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import lowrank
from .families import final_norm, fold_scale, negate_norm
from ..errors import FoldError


def residual_scales(scales: torch.Tensor) -> list[tuple[float, float]]:
    """Per layer (c_in, c_mid): the running residual scale entering the attention and the MLP branch."""
    c, out = 1.0, []
    for b_a, s_a, b_m, s_m in scales.double().tolist():
        c1 = s_a * c
        out.append((c, c1))
        c = s_m * c1
    out.append((c, c))  # what reaches the final norm
    return out


def check_foldable(hs) -> list[tuple[float, float]]:
    """The running scales of `hs` (a Hopscotch handle), or FoldError saying why its scalars cannot be folded."""
    scales = hs.effective_scales()
    cs = residual_scales(scales)
    branch = hs.family.layer
    for i, (c, c1) in enumerate(cs[:-1]):
        for name, val in (("s_att", scales[i, 1]), ("s_mlp", scales[i, 3])):
            if val == 0:
                raise FoldError(f"layer {i} has {name} = 0: the residual stream vanishes there, so the model "
                                "cannot be written as a stock checkpoint (no residual scale to fold)")
        if branch.attn_in_norm is None and (c != 1.0 or c1 != 1.0):
            raise FoldError(
                f"'{hs.family.name}' layers read the residual stream without a norm before each branch, so a "
                f"residual scale cannot be folded exactly (layer {i}: s_att/s_mlp give a running scale "
                f"{c1:.4g}); export --format compact keeps the scalars, or train with s fixed at 1")
    return cs


def share_copy(model: nn.Module, changed: list[nn.Module]) -> nn.Module:
    """A structural copy of `model` whose parameters are the model's own tensors, except those of the modules in
    `changed`, which are fresh copies (to be modified). Memory: the changed tensors only, not a second model."""
    memo: dict[int, object] = {id(p): p for p in model.parameters()}
    for mod in changed:
        for p in mod.parameters(recurse=False):
            memo[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
    return copy.deepcopy(model, memo)


def fold_model(hs, share: bool = False) -> nn.Module:
    """A plain model (no Hopscotch attached) computing what the handle computes, all scalars folded.

    share=False: a full copy of `hs.model`. share=True: only the weights the fold changes (output projections,
    the norms it negates, the projections the low-rank deltas merge into) are copied; every other weight is the
    attached model's own tensor, so the result costs a fraction of the model's memory (the exports use this; it
    must then be treated as read-only, and it reads the attached model's weights, so use it before they change).
    """
    cs = check_foldable(hs)
    scales = hs.effective_scales().double()
    branch = hs.family.layer
    channels = hs.effective_channel_scales()  # None, or [L, 2, hidden] (granularity "channel")
    plan = []  # per layer: (negate attn norm, negate mlp norm, ((target, factor, channel vector), ...))
    for i in range(hs.num_layers):
        b_a, _, b_m, _ = scales[i].tolist()
        c, c1 = cs[i]
        c2 = cs[i + 1][0]
        folds = []
        for col, factor, target in ((0, b_a / c1, branch.attn_out), (1, b_m / c2, branch.mlp_out)):
            vec = None if channels is None else channels[i, col].double()
            if vec is not None and bool((vec == 1.0).all()):
                vec = None
            if vec is not None or factor != 1.0:
                folds.append((target, factor, vec))
        plan.append((c < 0 and branch.attn_in_norm is not None, c1 < 0 and branch.mlp_in_norm is not None,
                     tuple(folds)))
    negate_final = cs[-1][0] < 0
    with hs._bare():
        if share:
            changed = [final_norm(hs.model)] if negate_final else []
            skipped = {"attn": set(hs.skipped), "mlp": set(hs.skipped_mlp)}
            for layer, (neg_a, neg_m, folds) in zip(hs.family.layers, plan):
                changed += [layer.get_submodule(t[0]) for t, _, _ in folds]
                changed += [layer.get_submodule(n[0]) for n, on in ((branch.attn_in_norm, neg_a),
                                                                     (branch.mlp_in_norm, neg_m)) if on]
            if hs.lora_rank:
                changed += [hs.family.layers[s.layer].get_submodule(s.path) for s in hs._slots()
                            if s.layer not in skipped[s.part]]
            new = share_copy(hs.model, changed)
        else:
            new = copy.deepcopy(hs.model)
            for p in new.parameters():
                p.requires_grad_(False)
    layers = new.get_decoder().layers
    if hs.lora_rank:  # low-rank deltas first: W + B A, inside the branch the scalars below multiply
        lowrank.merge(layers, hs._slots(), hs.lora, hs.lora_rank, hs.skipped, hs.skipped_mlp)
    for layer, (neg_a, neg_m, folds) in zip(layers, plan):
        if neg_a:
            negate_norm(layer.get_submodule(branch.attn_in_norm[0]), branch.attn_in_norm[1])
        if neg_m:
            negate_norm(layer.get_submodule(branch.mlp_in_norm[0]), branch.mlp_in_norm[1])
        for target, factor, vec in folds:
            # one scale per output channel (rows of o_proj/down_proj), else one number
            fold_scale(layer, target, vec * factor if vec is not None else factor)
    if negate_final:
        negate_norm(final_norm(new), branch.final_norm_kind)
    return new


def eps_effect_bound(hs, ids: torch.Tensor) -> float:
    """The largest relative change the fold makes to any norm output on `ids` (see module docstring)."""
    cs = check_foldable(hs)
    eps = _norm_eps(hs.model)
    worst = 0.0
    state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def grab(idx, x, x1, out):
        state[idx] = (x.detach().double(), x1.detach().double())

    with torch.no_grad(), hs.probe(grab):
        hs.model(ids.to(next(hs.model.parameters()).device))
    for i, (x, x1) in state.items():
        for h, c in ((x, cs[i][0]), (x1, cs[i][1])):
            m = (h / c).pow(2).mean(-1)  # mean square of the folded stream h' = h / c
            rel = ((m + eps / c ** 2) / (m + eps)).sqrt().sub(1).abs().max().item()
            worst = max(worst, rel)
    return worst


def _norm_eps(model: nn.Module) -> float:
    cfg = model.config.get_text_config()
    for key in ("rms_norm_eps", "layer_norm_eps", "norm_eps"):
        if getattr(cfg, key, None) is not None:
            return float(getattr(cfg, key))
    return 1e-6
