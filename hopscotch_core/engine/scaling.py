"""The Hopscotch layer: four scalars per decoder layer, skipped attention blocks, fold and compaction.

    x1  = b_att[l] * A(x)  + s_att[l] * x        (A = attention branch, see families.py)
    out = b_mlp[l] * M(x1) + s_mlp[l] * x1       (M = MLP branch)

`attach(model)` gives a `Hopscotch` handle holding one float32 nn.Parameter `scales` of shape [num_layers, 4]
(columns b_att, s_att, b_mlp, s_mlp), all ones: the model then computes exactly what it computed before.
Granularity "channel" (`hs.set_granularity("channel")`) adds per-channel branch multipliers: a second float32
Parameter `channel_scales` [num_layers, 2, hidden] (b_att and b_mlp vectors, all ones by default) multiplied
with the b columns, so b_att * A(x) becomes (b_att * c_att) ⊙ A(x); s stays scalar, and everything still folds
into the output projections' rows (folding.py). With granularity "scalar" (the paper's) they are not used.
`hs.set_lora_rank(R)` adds low-rank deltas B A on every kept branch's output projection (lowrank.py: one flat
float32 Parameter `lora`, applied by forward hooks on those projections, merged into their weights on export). It
overrides `forward` on each decoder-layer *instance* (the class, the module tree and the state dict are not
touched) and freezes the model's own parameters; `detach()` undoes both. A skipped block's attention is not
called at all, and its KV-cache layer only counts tokens (cache.py). `compact()` returns a copy of the model
without the skipped blocks' attention weights, with b_att/b_mlp folded into the branch's last weight.

    import hopscotch_core as hc
    model, tok = hc.load_model("default")
    with hc.attach(model) as hs:
        hs.skip([3, 7])
        out = model.generate(**tok("2+2=", return_tensors="pt"), max_new_tokens=8)
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts, lowrank
from .families import ModelFamily, fold_scale, get_family
from .cache import cache_kwarg, record_skipped
from ..constants import COLUMNS, GRANULARITIES
from ..errors import (AdapterMismatchError, DetachedError, HopscotchError, InvalidBlocksError,  # noqa: F401
                      InvalidScalesError, check_blocks)

_cache_kwarg = cache_kwarg  # its old name here
_HANDLE_ATTR = "_hopscotch"
_COMPACT_ATTR = "_hopscotch_compact"
# Hopscotch.in_thread(): per thread, {id(handle): (skipped set, per-layer python floats)} (module level: a handle
# stays deep-copyable)
_THREAD = threading.local()


def _mine(handle) -> tuple[frozenset[int], list] | None:
    got = getattr(_THREAD, "cfg", None)
    return got.get(id(handle)) if got else None


class RemovedBlock(nn.Module):
    """Stands where a compacted layer's attention (or MLP) was: no parameters, never called."""

    def __init__(self, layer_idx: int, name: str = "self_attn"):
        super().__init__()
        self.layer_idx, self.name = layer_idx, name

    def forward(self, *args: Any, **kwargs: Any):
        raise RuntimeError(f"{self.name} of block {self.layer_idx} was removed by Hopscotch compaction")


def _layer_forward(family: ModelFamily, layer: nn.Module, idx: int, owner: Any) -> Callable[..., torch.Tensor]:
    """A forward for decoder layer `idx` implementing the Hopscotch formula.

    `owner` (a Hopscotch handle, or the frozen state of a compact model) answers `_is_skipped(idx)`,
    `_mlp_skipped(idx)`, `_scales_on(x)` (an [L, 4] tensor, or per-layer tuples of python floats),
    `_channels_on(x)` (None, or [L, 2, C] per-channel multipliers of b_att / b_mlp) and holds
    `_probe`: None, or a callable(idx, x, x1, out) that sees each layer's input, mid and output states.
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
        sc = owner._scales_on(x)
        b_att, s_att, b_mlp, s_mlp = (sc[idx, 0], sc[idx, 1], sc[idx, 2], sc[idx, 3]) if isinstance(
            sc, torch.Tensor) else sc[idx]
        ch = owner._channels_on(x)
        if ch is not None:  # (C,) vectors: b ⊙ branch broadcasts over (B, T, C); in the activations' dtype, since a
            # float32 vector would promote bf16 activations to float32 (the parameter itself stays float32)
            b_att, b_mlp = (b_att * ch[idx, 0]).to(x.dtype), (b_mlp * ch[idx, 1]).to(x.dtype)
        if owner._is_skipped(idx):
            cache = kwargs.get(cache_kw)
            if cache is not None:
                record_skipped(cache, idx, x)
            x1 = _scaled(s_att, x)
        else:
            x1 = _combine(b_att, branch.attention(layer, x, kwargs), s_att, x)
        if owner._mlp_skipped(idx):
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


def _as_blocks(blocks: int | Iterable[int], n: int) -> list[int]:
    """Block indices of a skip set (a single index, an iterable, one-element tensors), checked by the package's one
    block rule (errors.check_blocks; an empty set is fine here). Raises InvalidBlocksError."""
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        blocks = [blocks]  # a single index
    blocks = [b.item() if isinstance(b, torch.Tensor) and b.numel() == 1 else b for b in blocks]
    return check_blocks(blocks, n, allow_empty=True)


class Hopscotch:
    """Trainable Hopscotch scalars and skip set attached to a model (see module docstring)."""

    def __init__(self, model: nn.Module):
        if getattr(model, _HANDLE_ATTR, None) is not None:
            raise HopscotchError("this model already has Hopscotch attached; call .detach() on that handle first")
        if getattr(model, _COMPACT_ATTR, None) is not None:
            raise HopscotchError("this is a compacted Hopscotch model; attach to the original model instead")
        family = get_family(model)
        layers = family.layers
        for i, layer in enumerate(layers):
            if "forward" in vars(layer):
                raise HopscotchError(f"decoder layer {i} already has a patched forward (another tool?)")
        self.model = model
        self.family = family
        self.num_layers = family.num_layers
        device = next(model.parameters()).device
        self.scales = nn.Parameter(torch.ones(self.num_layers, 4, dtype=torch.float32, device=device))
        self.hidden_size = int(family.text_config.hidden_size)
        # granularity "channel": per-channel multipliers of b_att (column 0) and b_mlp (column 1)
        self.channel_scales = nn.Parameter(torch.ones(self.num_layers, 2, self.hidden_size, dtype=torch.float32,
                                                      device=device))
        self.granularity = "scalar"
        # low-rank healing (lowrank.py): rank-R deltas on each branch's output projection, one flat float32
        # vector; rank 0 = none. Forward hooks on those projections add them (registered on first use).
        self.lora_rank = 0
        self.lora = nn.Parameter(torch.zeros(0, dtype=torch.float32, device=device))
        self._lora_slots: list[lowrank.Slot] | None = None
        self._slot_at: dict[tuple[int, str], lowrank.Slot] = {}  # (layer, part) -> its slot, with _lora_slots
        self._lora_hooks: list = []
        # skipped blocks, in the order they were skipped: column 0 (attention) and column 2 (MLP, for baselines
        # that remove whole layers)
        self._skips: dict[int, list[int]] = {0: [], 2: []}
        self._probe: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
        self._attached = True
        self._grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self._hook = self.scales.register_hook(self._mask_grad)
        # Without autograd, each forward reads the scalars once as python floats (one device sync per forward,
        # not per layer) so that layers run plain scalar kernels: exactly the stock ones at all ones.
        self._snapshot: list[tuple[float, float, float, float]] | None = None
        # per_row(): [B, L, 4] scalars, one configuration per batch row, and the blocks skipped in every row
        self._rows: torch.Tensor | None = None
        self._rows_on: dict[tuple, torch.Tensor] = {}
        self._rows_skipped: frozenset[int] = frozenset()
        decoder = model.get_decoder()
        self._snap_hooks = (decoder.register_forward_pre_hook(self._take_snapshot),
                            decoder.register_forward_hook(self._drop_snapshot))
        for i, layer in enumerate(layers):
            layer.forward = _layer_forward(family, layer, i, self)
        setattr(model, _HANDLE_ATTR, self)

    # ----------------------------------------------------------------------------------------- internals
    def _is_skipped(self, idx: int) -> bool:
        mine = _mine(self)
        if mine is not None:
            return idx in mine[0]
        if self._rows is not None:
            return idx in self._rows_skipped
        return idx in self._skips[0]

    def _mlp_skipped(self, idx: int) -> bool:
        return self._rows is None and _mine(self) is None and idx in self._skips[2]

    def _take_snapshot(self, *_: Any) -> None:
        if torch.is_grad_enabled():
            self._snapshot = None
        else:
            self._snapshot = [tuple(row) for row in self.scales.detach().tolist()]

    def _drop_snapshot(self, *_: Any) -> None:
        self._snapshot = None

    def _scales_on(self, x: torch.Tensor):
        mine = _mine(self)
        if mine is not None:
            return mine[1]
        if self._rows is not None:
            if x.shape[0] != self._rows.shape[0]:
                raise HopscotchError(f"per_row() was given {self._rows.shape[0]} configurations but the batch has "
                                     f"{x.shape[0]} rows")
            key = (x.device, x.dtype)
            if key not in self._rows_on:  # (L, 4, B, 1, 1): sc[idx, col] broadcasts over (B, T, C)
                self._rows_on[key] = self._rows.permute(1, 2, 0)[..., None, None].to(device=x.device, dtype=x.dtype)
            return self._rows_on[key]
        if self._snapshot is not None and not torch.is_grad_enabled():
            return self._snapshot
        s = self.scales
        return s if s.device == x.device else s.to(x.device)

    def _channels_on(self, x: torch.Tensor) -> torch.Tensor | None:
        mine = _mine(self)
        if mine is not None:
            ch = mine[2]
        elif self._rows is not None or self.granularity != "channel":
            return None
        elif torch.is_grad_enabled():
            ch = self.channel_scales
            return ch if ch.device == x.device else ch.to(x.device)
        else:
            ch = self.channel_scales.detach()
        if ch is None:
            return None
        return ch if (ch.device == x.device and ch.dtype == x.dtype) else ch.to(device=x.device, dtype=x.dtype)

    def _delta(self, idx: int, part: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) of the low-rank delta on layer idx's `part` projection as it acts now in this thread, or None."""
        mine = _mine(self)
        if mine is not None:
            got = mine[3].get((idx, part)) if mine[3] else None
        elif self._rows is not None or not self.lora_rank:
            return None
        else:
            flat = self.lora if torch.is_grad_enabled() else self.lora.detach()
            got = self._slot_at[(idx, part)].view(flat, self.lora_rank)  # this delta only: the hook's hot path
        if got is None:
            return None
        a, b = got
        if a.device != x.device or a.dtype != x.dtype:
            a, b = a.to(device=x.device, dtype=x.dtype), b.to(device=x.device, dtype=x.dtype)
        return a, b

    def _slots(self) -> list[lowrank.Slot]:
        if self._lora_slots is None:
            self._lora_slots = lowrank.layout(self.family)
            self._slot_at = {(s.layer, s.part): s for s in self._lora_slots}
        return self._lora_slots

    def _ensure_lora_hooks(self) -> None:
        if self._lora_hooks:
            return
        import torch.nn.functional as F

        for idx, part, mod, _ in lowrank.targets(self.family):
            def hook(mod, args, out, idx=idx, part=part):
                d = self._delta(idx, part, out)
                if d is None:
                    return None
                a, b = d
                return out + F.linear(F.linear(args[0], a), b)  # W x + B (A x)

            self._lora_hooks.append((mod, mod.register_forward_hook(hook)))

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        if not (self._skips[0] or self._skips[2]):
            return grad
        grad = grad.clone()
        for col, blocks in self._skips.items():
            grad[blocks, col] = 0.0  # the b of a skipped block is not a free parameter
        return grad

    def _check(self) -> None:
        if not self._attached:
            raise DetachedError("this Hopscotch handle was detached; call hc.attach(model) again")

    def _set(self, col: int, blocks: int | Iterable[int], on: bool) -> Hopscotch:
        self._check()
        valid = _as_blocks(blocks, self.num_layers)  # validate everything before changing anything
        current = self._skips[col]
        change = [i for i in valid if (i in current) != on]
        with torch.no_grad():
            for i in change:
                self.scales[i, col] = 0.0 if on else 1.0
        self._skips[col] = current + change if on else [i for i in current if i not in change]
        return self

    # ----------------------------------------------------------------------------------------- skip set
    @property
    def skipped(self) -> tuple[int, ...]:
        """Skipped attention blocks, ascending."""
        return tuple(sorted(self._skips[0]))

    @property
    def skipped_mlp(self) -> tuple[int, ...]:
        """Skipped MLP blocks (whole-layer baselines), ascending."""
        return tuple(sorted(self._skips[2]))

    def skip(self, blocks: int | Iterable[int]) -> Hopscotch:
        """Skip these attention blocks (b_att = 0, not computed). Already skipped ones stay skipped."""
        return self._set(0, blocks, True)

    def unskip(self, blocks: int | Iterable[int]) -> Hopscotch:
        """Compute these attention blocks again, with b_att = 1."""
        return self._set(0, blocks, False)

    def set_skipped(self, blocks: Iterable[int]) -> Hopscotch:
        """Make exactly `blocks` the set of skipped attention blocks."""
        wanted = _as_blocks(blocks, self.num_layers)
        self.unskip([i for i in self._skips[0] if i not in wanted])
        return self.skip(wanted)

    def skip_mlp(self, blocks: int | Iterable[int]) -> Hopscotch:
        """Skip these MLP blocks (b_mlp = 0, not computed): with skip(), this removes whole layers."""
        return self._set(2, blocks, True)

    def unskip_mlp(self, blocks: int | Iterable[int]) -> Hopscotch:
        return self._set(2, blocks, False)

    # ----------------------------------------------------------------------------------------- scalars
    def set_scales(self, values: torch.Tensor | Iterable) -> Hopscotch:
        """Copy `values` ([num_layers, 4], finite) into the scalars; skipped blocks keep b = 0."""
        self._check()
        t = torch.as_tensor(values, dtype=torch.float32) if not isinstance(values, torch.Tensor) else values
        if t.shape != (self.num_layers, 4):
            raise InvalidScalesError(f"scales must have shape ({self.num_layers}, 4), got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise InvalidScalesError("scales contain NaN or inf")
        with torch.no_grad():
            self.scales.copy_(t.to(self.scales.device, torch.float32))
            for col, blocks in self._skips.items():
                self.scales[blocks, col] = 0.0
        return self

    def set_granularity(self, granularity: str) -> Hopscotch:
        """"scalar" (the paper's: one b per branch) or "channel" (b_att and b_mlp also get per-channel
        multipliers, `channel_scales`). Switching to "scalar" resets the multipliers to ones."""
        self._check()
        check_granularity(granularity)
        self.granularity = granularity
        if granularity == "scalar":
            with torch.no_grad():
                self.channel_scales.fill_(1.0)
        return self

    def set_channel_scales(self, values: torch.Tensor | Iterable) -> Hopscotch:
        """Copy `values` ([num_layers, 2, hidden], finite) into the per-channel multipliers of b_att / b_mlp and
        switch to granularity "channel"."""
        self._check()
        t = check_channel_scales(values, self.num_layers, self.hidden_size)
        with torch.no_grad():
            self.channel_scales.copy_(t.to(self.channel_scales.device))
        self.granularity = "channel"
        return self

    def effective_channel_scales(self) -> torch.Tensor | None:
        """A float32 CPU copy of the per-channel multipliers, or None with granularity "scalar"."""
        if self.granularity != "channel":
            return None
        return self.channel_scales.detach().float().cpu().clone()

    def set_lora_rank(self, rank: int) -> Hopscotch:
        """Give every kept branch's output projection a rank-`rank` delta B A (lowrank.py), B = 0 so the model
        is unchanged until training moves it; 0 removes the deltas. LoraError for a bad rank, a rank above the
        projections' width or a family whose projections are not known."""
        self._check()
        rank = lowrank.check_rank(rank, self.family if rank else None)
        if rank:
            self._ensure_lora_hooks()
            data = lowrank.init_flat(self._slots(), rank, self.scales.device)
        else:
            data = torch.zeros(0, dtype=torch.float32, device=self.scales.device)
        self.lora = nn.Parameter(data)
        self.lora_rank = rank
        return self

    def set_lora(self, state: dict[str, torch.Tensor]) -> Hopscotch:
        """Load low-rank deltas ({"L.attn.A": (R, in), "L.attn.B": (out, R), ...}, as lora_state() gives; an
        empty dict removes them); LoraError when they were made for another shape."""
        self._check()
        if not state:
            return self.set_lora_rank(0)
        flat, rank = lowrank.from_state(state, self._slots())
        if rank != self.lora_rank:
            self.set_lora_rank(rank)
        with torch.no_grad():
            self.lora.copy_(flat.to(self.lora.device))
        return self

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The low-rank deltas as float32 CPU tensors {"L.part.A", "L.part.B"}; {} with rank 0."""
        if not self.lora_rank:
            return {}
        return lowrank.to_state(self.lora, self._slots(), self.lora_rank)

    def trainable(self) -> list[nn.Parameter]:
        """The parameters a training step updates: [scales], plus channel_scales with granularity "channel",
        plus the flat low-rank deltas `lora` with lora_rank > 0 (always in this order)."""
        return ([self.scales] + ([self.channel_scales] if self.granularity == "channel" else [])
                + ([self.lora] if self.lora_rank else []))

    def trainable_names(self) -> list[str]:
        """A name per trainable() entry: "scales", "channel_scales", "lora"."""
        return (["scales"] + (["channel_scales"] if self.granularity == "channel" else [])
                + (["lora"] if self.lora_rank else []))

    def reset(self) -> Hopscotch:
        """All ones, nothing skipped, deltas back at their start (B = 0): the original model (the granularity and
        the lora rank stay)."""
        self._check()
        self._skips = {0: [], 2: []}
        with torch.no_grad():
            self.scales.fill_(1.0)
            self.channel_scales.fill_(1.0)
            if self.lora_rank:
                self.lora.copy_(lowrank.init_flat(self._slots(), self.lora_rank, self.lora.device))
        return self

    def configure(self, skipped: Iterable[int] = (), scales: torch.Tensor | None = None,
                  skipped_mlp: Iterable[int] = (), channel_scales: torch.Tensor | None = None,
                  lora: dict[str, torch.Tensor] | None = None) -> "Hopscotch":
        """Reset, then apply exactly this state: skipped attention (and MLP) blocks, optional [L, 4] scales,
        optional [L, 2, hidden] channel multipliers (which switch the granularity to "channel") and optional
        low-rank deltas (lora_state() form; they set the rank)."""
        self.reset()
        self.skip(list(skipped)).skip_mlp(list(skipped_mlp))
        if scales is not None:
            self.set_scales(scales)
        if channel_scales is not None:
            self.set_channel_scales(channel_scales)
        if lora:
            self.set_lora(lora)
        return self

    @contextmanager
    def applied(self, skipped: Iterable[int] = (), scales: torch.Tensor | None = None,
                skipped_mlp: Iterable[int] = (), channel_scales: torch.Tensor | None = None,
                lora: dict[str, torch.Tensor] | None = None) -> Iterator["Hopscotch"]:
        """Within: `configure(...)`; afterwards the handle is reset (all ones, nothing skipped, granularity and
        lora rank as before)."""
        before, rank = self.granularity, self.lora_rank
        self.configure(skipped, scales, skipped_mlp, channel_scales, lora)
        try:
            yield self
        finally:
            self.reset()
            self.granularity = before
            if self.lora_rank != rank:
                self.set_lora_rank(rank)

    def _effective(self, skipped: Iterable[int], scales) -> tuple[list[int], torch.Tensor]:
        """(validated blocks, float32 [L, 4] CPU scalars with b_att = 0 on them) of one configuration."""
        blocks = _as_blocks(list(skipped), self.num_layers)
        eff = torch.ones(self.num_layers, 4, dtype=torch.float32)
        if scales is not None:
            sc = torch.as_tensor(scales, dtype=torch.float32).detach().cpu()
            if tuple(sc.shape) != (self.num_layers, 4) or not torch.isfinite(sc).all():
                raise InvalidScalesError(f"scales must be a finite [{self.num_layers}, 4] tensor, got "
                                         f"{tuple(sc.shape)}")
            eff = sc.clone()
        eff[blocks, 0] = 0.0
        return blocks, eff

    @contextmanager
    def in_thread(self, skipped: Iterable[int] = (), scales: torch.Tensor | None = None,
                  channel_scales: torch.Tensor | None = None,
                  lora: dict[str, torch.Tensor] | None = None) -> Iterator["Hopscotch"]:
        """Within, and only in the calling thread: forwards run with `skipped` attention blocks, optional
        [L, 4] `scales`, optional [L, 2, hidden] `channel_scales` and optional low-rank deltas `lora`
        (lora_state() form); other threads keep seeing the handle's own
        configuration. Several threads can so run different skip sets on one model at the same time, each
        computing exactly what configure() would (the same inference kernels). With nothing given it is the
        original model (the teacher of the KL objective). Inference only: no gradients reach the scalars."""
        self._check()
        blocks, eff = self._effective(skipped, scales)
        ch = None
        if channel_scales is not None:
            ch = check_channel_scales(channel_scales, self.num_layers, self.hidden_size).to(self.scales.device)
        deltas = None
        if lora:
            flat, rank = lowrank.from_state(lora, self._slots())
            self._ensure_lora_hooks()
            deltas = lowrank.views(flat.to(self.scales.device), self._slots(), rank)
        if not hasattr(_THREAD, "cfg"):
            _THREAD.cfg = {}
        _THREAD.cfg[id(self)] = (frozenset(blocks), [tuple(row) for row in eff.tolist()], ch, deltas)
        try:
            yield self
        finally:
            _THREAD.cfg.pop(id(self), None)

    @contextmanager
    def per_row(self, configs: Sequence[tuple[Iterable[int], torch.Tensor | None]]) -> Iterator["Hopscotch"]:
        """Within: batch row r runs configuration configs[r] = (skipped attention blocks, [L, 4] scales or None),
        so one batched forward computes several skip sets side by side (the batch must have len(configs) rows).

        A block skipped in every row is not computed; one skipped in some rows only is computed for the batch and
        multiplied by b = 0 in those rows, which gives exactly s * x there (0 * a finite branch is 0). The scalars
        act in the activations' dtype. Inference only (no gradients reach `scales`); MLP skips are not supported.
        Outputs equal the rows' own single-configuration forwards up to the float rounding of batched matmuls.
        Low-rank deltas do not run per row: a handle with lora_rank > 0 refuses (use in_thread instead).
        """
        self._check()
        if self.lora_rank:
            raise HopscotchError("per_row() runs without low-rank deltas, and this handle has them (lora_rank "
                                 f"{self.lora_rank}); use in_thread() for each configuration instead")
        rows, common = [], None
        for skipped, scales in configs:
            blocks, eff = self._effective(skipped, scales)
            rows.append(eff)
            common = set(blocks) if common is None else common & set(blocks)
        if not rows:
            raise HopscotchError("per_row() needs at least one configuration")
        self._rows, self._rows_on, self._rows_skipped = torch.stack(rows), {}, frozenset(common or ())
        try:
            yield self
        finally:
            self._rows, self._rows_on, self._rows_skipped = None, {}, frozenset()

    def effective_scales(self) -> torch.Tensor:
        """A float32 CPU copy of the scalars as they act (b = 0 on skipped blocks)."""
        s = self.scales.detach().float().cpu().clone()
        for col, blocks in self._skips.items():
            s[blocks, col] = 0.0
        return s

    @contextmanager
    def probe(self, fn: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
        """Within: fn(layer, x, x1, out) is called by every layer (input, after attention, output)."""
        self._check()
        self._probe = fn
        try:
            yield
        finally:
            self._probe = None

    # ----------------------------------------------------------------------------------------- artifacts
    def save(self, path: str | Path, objective: str | None = None) -> Path:
        """Write scales.safetensors (+ channel_scales with granularity "channel") and hopscotch.json into
        directory `path`; `objective` (what the scalars were trained on: ce | kl | ce+kl) is recorded."""
        self._check()
        meta = {"kind": "adapter", "skipped": list(self._skips[0]), "skipped_mlp": list(self._skips[2]),
                "columns": list(COLUMNS), "base": artifacts.model_identity(self.model),
                "granularity": self.granularity, "objective": objective}
        return artifacts.write_artifact(path, self.effective_scales(), meta,
                                        channel_scales=self.effective_channel_scales(), lora=self.lora_state())

    # ----------------------------------------------------------------------------------------- lifecycle
    def detach(self) -> nn.Module:
        """Restore the model exactly as it was before attach; the handle is unusable afterwards."""
        if not self._attached:
            return self.model
        for layer in self.family.layers:
            vars(layer).pop("forward", None)
        for _, h in self._lora_hooks:
            h.remove()
        self._lora_hooks = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._grad_flags.get(name, p.requires_grad))
        self._hook.remove()
        for h in self._snap_hooks:
            h.remove()
        if getattr(self.model, _HANDLE_ATTR, None) is self:
            delattr(self.model, _HANDLE_ATTR)
        self._attached = False
        return self.model

    # ----------------------------------------------------------------------------------------- PEFT's names
    # Where PEFT has a name for the same thing, it works here too (aliases; our names stay the documented ones).
    def save_pretrained(self, path: str | Path) -> Path:
        """= save(path): scales.safetensors + hopscotch.json."""
        return self.save(path)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path) -> "Hopscotch":
        """= hc.load_adapter(model, path): attach and load saved scalars (refused for another model)."""
        return load_adapter(model, path)

    def unload(self) -> nn.Module:
        """= detach(): the model exactly as it was before attach, without merging anything."""
        return self.detach()

    def merge_and_unload(self) -> nn.Module:
        """A plain model (no Hopscotch, the original architecture) computing what this handle computes, the
        scalars folded into its weights (folding.fold_model: exact up to float rounding, FoldError where a scalar
        cannot fold); then this handle is detached. Unlike PEFT, the merged model is a copy: the attached model's
        own weights are left as loaded."""
        from .folding import fold_model

        merged = fold_model(self)
        self.detach()
        return merged

    def __enter__(self) -> Hopscotch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @contextmanager
    def _bare(self) -> Iterator[None]:
        """Within: the model without patches, delta hooks or handle (for copying)."""
        layers = self.family.layers
        fwd = [vars(layer).pop("forward") for layer in layers]
        hooks = [(mod, h.id, mod._forward_hooks.pop(h.id)) for mod, h in self._lora_hooks]
        delattr(self.model, _HANDLE_ATTR)
        try:
            yield
        finally:
            for layer, f in zip(layers, fwd):
                layer.forward = f
            for mod, hid, fn in hooks:
                mod._forward_hooks[hid] = fn
            setattr(self.model, _HANDLE_ATTR, self)

    def compact(self, fold: bool = True, share: bool = False) -> nn.Module:
        """A new model without the skipped blocks' weights, computing what this handle computes.

        With fold=True, b_att and b_mlp are multiplied into the last weight of their branch (o_proj/down_proj,
        or the post-norm for Gemma/OLMo 2), which is exact up to rounding; s_att and s_mlp stay as constants.
        The original model is left as it is. Save with `hc.save_model(small, dir)`, reload with `hc.load_model(dir)`.
        share=True copies only the weights that folding or the low-rank deltas change and shares every other
        tensor with the original (folding.share_copy: a fraction of the memory; treat the result as read-only).
        """
        self._check()
        layers = self.family.layers
        names = {0: self.family.layer.attn_name, 2: self.family.layer.mlp_name}
        kept: list[tuple[int, str, nn.Module]] = []
        with self._bare():
            try:
                for col, blocks in self._skips.items():
                    for i in blocks:
                        kept.append((i, names[col], getattr(layers[i], names[col])))
                        setattr(layers[i], names[col], RemovedBlock(i, names[col]))
                if share:
                    from .folding import share_copy

                    branch = self.family.layer
                    targets = [branch.attn_out[0], branch.mlp_out[0]] if fold else []
                    changed = [layers[i].get_submodule(t) for i in range(self.num_layers) for t in targets
                               if not isinstance(getattr(layers[i], t.split(".")[0], None), RemovedBlock)]
                    if self.lora_rank:
                        changed += [layers[s.layer].get_submodule(s.path) for s in self._slots()
                                    if s.layer not in (self.skipped if s.part == "attn" else self.skipped_mlp)]
                    new = share_copy(self.model, changed)
                else:
                    new = copy.deepcopy(self.model)
            finally:
                for i, name, module in kept:
                    setattr(layers[i], name, module)
        if not share:  # shared tensors are the attached model's: their flags stay the handle's
            for name, p in new.named_parameters():
                p.requires_grad_(self._grad_flags.get(name, True))
        if self.lora_rank:  # deltas always merge into the copy's weights (exact up to rounding)
            lowrank.merge(get_family(new).layers, self._slots(), self.lora, self.lora_rank, self.skipped,
                          self.skipped_mlp)
        identity = artifacts.model_identity(self.model)
        install_compact(new, self.effective_scales(), self.skipped, identity, fold=fold,
                        skipped_mlp=self.skipped_mlp, channel_scales=self.effective_channel_scales())
        return new


def attach(model: nn.Module) -> Hopscotch:
    """Attach Hopscotch scalars (all ones) to a supported causal LM; see `Hopscotch`."""
    return Hopscotch(model)


def handle_of(model: nn.Module) -> Hopscotch | None:
    """The Hopscotch handle attached to `model`, if any."""
    return getattr(model, _HANDLE_ATTR, None)


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise HopscotchError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")


def check_channel_scales(values, num_layers: int, hidden: int) -> torch.Tensor:
    """`values` as a float32 CPU tensor [num_layers, 2, hidden], or InvalidScalesError."""
    t = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    t = t.to(device="cpu", dtype=torch.float32)
    if tuple(t.shape) != (num_layers, 2, hidden):
        raise InvalidScalesError(f"channel scales must have shape ({num_layers}, 2, {hidden}), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InvalidScalesError("channel scales contain NaN or inf")
    return t


def load_adapter(model: nn.Module, path: str | Path, granularity: str | None = None,
                 lora_rank: int | None = None) -> Hopscotch:
    """Attach the adapter saved at `path` to `model`, after checking it was made for this model (and, when
    `granularity` / `lora_rank` are given, trained with them: AdapterMismatchError otherwise)."""
    scales, meta = artifacts.read_artifact(path, kind="adapter")
    artifacts.check_identity(meta["base"], model, Path(path))
    saved = meta.get("granularity") or "scalar"
    if granularity is not None:
        check_granularity(granularity)
        if granularity != saved:
            raise AdapterMismatchError(
                f"the adapter at {path} was trained with granularity {saved!r}, but {granularity!r} was asked; "
                f"pass --granularity {saved} (or retrain the adapter with --granularity {granularity})")
    saved_rank = int(meta.get("lora_rank", 0))
    if lora_rank is not None and lora_rank != saved_rank:
        raise AdapterMismatchError(
            f"the adapter at {path} has low-rank deltas of rank {saved_rank}, but rank {lora_rank} was asked; "
            f"pass --lora-rank {saved_rank} (or retrain the adapter with --lora-rank {lora_rank})")
    channels = artifacts.read_channel_scales(path, meta)
    deltas = artifacts.read_lora(path, meta)
    hs = attach(model)
    try:
        hs.skip(meta["skipped"])
        hs.skip_mlp(meta.get("skipped_mlp", []))
        hs.set_scales(scales)
        if channels is not None:
            hs.set_channel_scales(channels)
        if deltas:
            try:
                hs.set_lora(deltas)
            except lowrank.LoraError as e:
                raise AdapterMismatchError(f"the adapter at {path}: {e}") from None
    except Exception:
        hs.detach()
        raise
    return hs


class CompactInfo:
    """The frozen Hopscotch state of a compacted model (its layers' forward reads it; save_model writes it).
    `channel_scales`: per-channel b multipliers not folded into weights (fold=False), or None."""

    def __init__(self, scales: torch.Tensor, skipped: tuple[int, ...], skipped_mlp: tuple[int, ...], base: dict,
                 folded: bool, channel_scales: torch.Tensor | None = None):
        self.scales, self.skipped, self.skipped_mlp, self.base, self.folded = (
            scales, skipped, skipped_mlp, base, folded)
        self.channel_scales = channel_scales
        self._ch_on: dict[tuple, torch.Tensor] = {}
        self._consts = [tuple(float(v) for v in row) for row in scales]
        self._att, self._mlp = frozenset(skipped), frozenset(skipped_mlp)
        self._probe = None

    def _is_skipped(self, idx: int) -> bool:
        return idx in self._att

    def _mlp_skipped(self, idx: int) -> bool:
        return idx in self._mlp

    def _scales_on(self, x: torch.Tensor) -> list[tuple[float, float, float, float]]:
        return self._consts

    def _channels_on(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.channel_scales is None:
            return None
        key = (x.device, x.dtype)
        if key not in self._ch_on:
            self._ch_on[key] = self.channel_scales.to(device=x.device, dtype=x.dtype)
        return self._ch_on[key]


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
