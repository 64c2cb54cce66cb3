"""Low-rank healing: rank-R deltas on the output projection of each branch, trained beside the scalars.

For every decoder layer l and branch p (attention `o_proj`, MLP `down_proj`; the family names the modules,
`LayerFamily.attn_delta` / `mlp_delta`) the handle adds

    W_lp x  ->  W_lp x + B_lp (A_lp x)          A_lp: (R, in)   B_lp: (out, R)   (LoRA, Hu et al. 2021)

inside the branch, so b_att / b_mlp and the channel multipliers still multiply the whole projection output. A
delta on a weight folds into that weight (W + B A), so every export stays a stock checkpoint. B starts at zero
(the model is unchanged until training moves it) and A at PEFT's default, uniform in +-1/sqrt(in), from a fixed
seed, so a run is reproducible and a resume starts from the same A.

All deltas live in one flat float32 vector (`Hopscotch.lora`), which keeps the training loop, its Adam state and
the data-parallel all-reduce exactly as they are for the scalars. `state_dict`-style names are used everywhere
else: `"{layer}.{attn|mlp}.A"` and `"{layer}.{attn|mlp}.B"` (adapter files, epoch files, `in_thread(lora=...)`).

Why not PEFT's injected LoRA layers: they replace `o_proj` / `down_proj` in the model's module tree (so the
state dict's names change) and switch adapters on and off per module for every thread at once, whereas the model
here is shared (the app's sessions, and the KL teacher, which is the same model with nothing applied, in the same
process); a forward hook that reads the calling thread's configuration keeps both intact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LoraError

PARTS = ("attn", "mlp")
INIT_SEED = 1234


@dataclass(frozen=True)
class Slot:
    """One delta: layer, branch part, module path in the layer, shapes, and where it sits in the flat vector."""

    layer: int
    part: str
    path: str
    d_in: int
    d_out: int
    at: int  # offset of A in the flat vector (per unit of rank); B follows A

    def view(self, flat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (R, in), B (out, R)) of this delta as views of `flat` (differentiable when flat is)."""
        a0 = self.at * rank
        b0 = a0 + rank * self.d_in
        return flat[a0:b0].view(rank, self.d_in), flat[b0:b0 + rank * self.d_out].view(self.d_out, rank)


def targets(family) -> list[tuple[int, str, nn.Module, str]]:
    """(layer, part, module, path) of every projection a delta can sit on; LoraError when the family does not name
    them or a layer lacks one."""
    names = {"attn": getattr(family.layer, "attn_delta", None), "mlp": getattr(family.layer, "mlp_delta", None)}
    if not all(names.values()):
        raise LoraError(f"low-rank healing does not know which modules to adapt in '{family.name}' models; "
                        "use --lora-rank 0")
    out = []
    for i, layer in enumerate(family.layers):
        for part in PARTS:
            try:
                mod = layer.get_submodule(names[part])
            except AttributeError:
                raise LoraError(f"layer {i} of this '{family.name}' model has no {names[part]}; low-rank healing "
                                "cannot adapt it (use --lora-rank 0)") from None
            if not isinstance(mod, nn.Linear):
                raise LoraError(f"{names[part]} of layer {i} is a {type(mod).__name__}, not a linear layer; "
                                "low-rank healing cannot adapt it (use --lora-rank 0)")
            out.append((i, part, mod, names[part]))
    return out


def max_rank(family) -> int:
    """The largest rank every target projection admits (min over their in and out widths)."""
    return min(min(m.in_features, m.out_features) for _, _, m, _ in targets(family))


def check_rank(rank, family=None) -> int:
    """`rank` as an int >= 0 (0 = off), within the model's widths when `family` is given; LoraError otherwise."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise LoraError(f"lora-rank must be a whole number >= 0 (0 = off), not {rank!r}")
    if rank and family is not None:
        top = max_rank(family)
        if rank > top:
            raise LoraError(f"lora-rank {rank} is larger than the narrowest adapted projection ({top} wide); "
                            f"use at most {top}")
    return rank


def layout(family) -> list[Slot]:
    """The slots of every delta, in the flat vector's order."""
    slots, at = [], 0
    for i, part, mod, path in targets(family):
        slots.append(Slot(i, part, path, mod.in_features, mod.out_features, at))
        at += mod.in_features + mod.out_features
    return slots


def flat_size(slots: list[Slot], rank: int) -> int:
    """Entries of the flat vector holding every delta at `rank`."""
    return rank * sum(s.d_in + s.d_out for s in slots)


def views(flat: torch.Tensor, slots: list[Slot], rank: int) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(layer, part): (A (R, in), B (out, R))} as views of `flat` (differentiable when flat is)."""
    return {(s.layer, s.part): s.view(flat, rank) for s in slots}


def init_flat(slots: list[Slot], rank: int, device=None) -> torch.Tensor:
    """A at PEFT's default (kaiming-uniform, a = sqrt(5): uniform in +-1/sqrt(in)) from a fixed seed, B = 0."""
    flat = torch.zeros(flat_size(slots, rank), dtype=torch.float32)
    gen = torch.Generator().manual_seed(INIT_SEED)
    for s in slots:
        a0 = s.at * rank
        bound = 1.0 / math.sqrt(s.d_in)
        flat[a0:a0 + rank * s.d_in] = (torch.rand(rank * s.d_in, generator=gen) * 2 - 1) * bound
    return flat.to(device) if device is not None else flat


def to_state(flat: torch.Tensor, slots: list[Slot], rank: int) -> dict[str, torch.Tensor]:
    """{"L.part.A": (R, in), "L.part.B": (out, R)} float32 CPU copies (the file form)."""
    out = {}
    for (i, part), (a, b) in views(flat.detach().float().cpu(), slots, rank).items():
        out[f"{i}.{part}.A"], out[f"{i}.{part}.B"] = a.clone(), b.clone()
    return out


def rank_of(state: dict[str, torch.Tensor]) -> int:
    """The rank of a state (0 for an empty one)."""
    for k, v in state.items():
        if k.endswith(".A"):
            return int(v.shape[0])
    return 0


def from_state(state: dict[str, torch.Tensor], slots: list[Slot], where: str = "the deltas") -> tuple[torch.Tensor, int]:
    """(flat vector, rank) of a state made for these slots; LoraError naming the first misfit."""
    rank = rank_of(state)
    want = {f"{s.layer}.{s.part}.{m}" for s in slots for m in "AB"}
    if set(state) != want:
        extra, missing = sorted(set(state) - want)[:3], sorted(want - set(state))[:3]
        raise LoraError(f"{where} do not fit this model (missing {missing}, unexpected {extra}); they were made "
                        "for a model of another shape")
    flat = torch.empty(flat_size(slots, rank), dtype=torch.float32)
    for (i, part), (a, b) in views(flat, slots, rank).items():
        sa, sb = state[f"{i}.{part}.A"], state[f"{i}.{part}.B"]
        if tuple(sa.shape) != tuple(a.shape) or tuple(sb.shape) != tuple(b.shape):
            raise LoraError(f"{where}: layer {i} {part} has A {tuple(sa.shape)} and B {tuple(sb.shape)}, this model "
                            f"needs A {tuple(a.shape)} and B {tuple(b.shape)} (another shape or rank)")
        if not (torch.isfinite(sa).all() and torch.isfinite(sb).all()):
            raise LoraError(f"{where}: layer {i} {part} contains NaN or inf")
        a.copy_(sa.float())
        b.copy_(sb.float())
    return flat, rank


def add_hooks(family, delta: Callable[[int, str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]) -> list:
    """A forward hook on every target projection that adds B (A x) to its output: [(module, hook handle), ...].
    `delta(layer, part, out)` gives the (A, B) acting in this call (the calling thread's configuration, on out's
    device and dtype), or None where no delta acts."""
    hooks = []
    for idx, part, mod, _ in targets(family):
        def hook(mod, args, out, idx=idx, part=part):
            d = delta(idx, part, out)
            if d is None:
                return None
            a, b = d
            return out + F.linear(F.linear(args[0], a), b)  # W x + B (A x)

        hooks.append((mod, mod.register_forward_hook(hook)))
    return hooks


def split_state(tensors: dict[str, torch.Tensor], prefix: str = "lora.") -> dict[str, torch.Tensor]:
    """The deltas stored among other tensors under `prefix` (epoch and adapter files), prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def merge(layers, slots: list[Slot], flat: torch.Tensor, rank: int, skip_attn=(), skip_mlp=()) -> None:
    """W += B A for every delta (in float64, then the weight's dtype), in place, on `layers` (the decoder layers
    of the model or of a copy of it); blocks in skip_attn / skip_mlp are left alone (a removed branch has
    nothing to merge into)."""
    if not rank:
        return
    skipped = {"attn": set(skip_attn), "mlp": set(skip_mlp)}
    with torch.no_grad():
        for s, (a, b) in zip(slots, views(flat.detach().cpu(), slots, rank).values()):
            if s.layer in skipped[s.part]:
                continue
            w = layers[s.layer].get_submodule(s.path).weight
            w.copy_(w.double() + (b.double() @ a.double()).to(w.device))
