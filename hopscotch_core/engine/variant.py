"""A variant: one configuration of the Hopscotch layer, and the one place that decides which configuration a forward
runs.

`Variant` is the configuration itself: skipped attention blocks, skipped MLP blocks, optional [L, 4] scalars,
optional [L, 2, hidden] per-channel multipliers of b_att / b_mlp and optional low-rank deltas (lowrank.py's state
form). A handle's model can run under three sources of configuration at once:

    the handle's own state      hs.scales, hs.skip(...), hs.channel_scales, hs.lora      -> Global (read live)
    the calling thread's        hs.in_thread(...): a Variant resolved once on entry      -> Fixed
    the batch's                 hs.per_row(...): one Variant per batch row               -> Rows

`active(handle)` picks one on every layer call, in that order of precedence: the thread's own, else per row, else
the handle's. The layer formula (formula.py) and the low-rank hooks (lowrank.py) read everything from what it
returns (a "reader"): `scales_on(x)`, `channels_on(x)`, `attn_skipped(idx)`, `mlp_skipped(idx)` and
`delta(idx, part, x)`. A compact model's frozen state is a Fixed reader too (compaction.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from . import lowrank
from ..constants import GRANULARITIES
from ..errors import HopscotchError, InvalidScalesError, check_blocks

# Hopscotch.in_thread(): per thread, {id(handle): Fixed} (module level, not on the handle: a handle stays
# deep-copyable, and threading.local is not)
_THREAD = threading.local()


@dataclass(frozen=True, eq=False)
class Variant:
    """The configuration of a variant: what a forward skips and with which scalars, multipliers and deltas.

    `skipped` / `skipped_mlp`: attention / MLP blocks not computed; `scales`: None (all ones) or [L, 4] (columns
    b_att, s_att, b_mlp, s_mlp; b of a skipped block counts as 0); `channel_scales`: None or [L, 2, hidden];
    `lora`: None or low-rank deltas in Hopscotch.lora_state() form. Nothing is checked here: the handle that
    runs a variant checks it against its model.
    """

    skipped: tuple[int, ...] = ()
    skipped_mlp: tuple[int, ...] = ()
    scales: torch.Tensor | None = None
    channel_scales: torch.Tensor | None = None
    lora: dict[str, torch.Tensor] | None = None

    @classmethod
    def of(cls, skipped: Iterable[int] = (), scales: Any = None, skipped_mlp: Iterable[int] = (),
           channel_scales: Any = None, lora: dict[str, torch.Tensor] | None = None) -> Variant:
        """A variant from the arguments configure() / in_thread() take (an empty lora dict is none)."""
        return cls(tuple(skipped), tuple(skipped_mlp), scales, channel_scales, lora or None)


# ----------------------------------------------------------------------------------------------- checks
def _as_blocks(blocks: int | Iterable[int], n: int) -> list[int]:
    """Block indices of a skip set (a single index, an iterable, one-element tensors), checked by the package's one
    block rule (errors.check_blocks; an empty set is fine here). Raises InvalidBlocksError."""
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        blocks = [blocks]  # a single index
    blocks = [b.item() if isinstance(b, torch.Tensor) and b.numel() == 1 else b for b in blocks]
    return check_blocks(blocks, n, allow_empty=True)


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


def effective(v: Variant, num_layers: int) -> tuple[list[int], list[int], torch.Tensor]:
    """(checked attention blocks, checked MLP blocks, float32 [L, 4] CPU scalars with b = 0 on them) of `v`."""
    blocks = _as_blocks(list(v.skipped), num_layers)
    mlp = _as_blocks(list(v.skipped_mlp), num_layers)
    eff = torch.ones(num_layers, 4, dtype=torch.float32)
    if v.scales is not None:
        sc = torch.as_tensor(v.scales, dtype=torch.float32).detach().cpu()
        if tuple(sc.shape) != (num_layers, 4) or not torch.isfinite(sc).all():
            raise InvalidScalesError(f"scales must be a finite [{num_layers}, 4] tensor, got {tuple(sc.shape)}")
        eff = sc.clone()
    eff[blocks, 0] = 0.0
    eff[mlp, 2] = 0.0
    return blocks, mlp, eff


# ----------------------------------------------------------------------------------------------- readers
def _on(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`t` on x's device and in x's dtype (itself when it already is)."""
    return t if (t.device == x.device and t.dtype == x.dtype) else t.to(device=x.device, dtype=x.dtype)


def _pair_on(got: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = got
    if a.device != x.device or a.dtype != x.dtype:
        a, b = a.to(device=x.device, dtype=x.dtype), b.to(device=x.device, dtype=x.dtype)
    return a, b


class Fixed:
    """A configuration resolved once: skip sets, per-layer python floats (the inference kernels: exactly the
    stock ones at 1), channel multipliers and delta views. Inference only: nothing here is a trained parameter."""

    __slots__ = ("att", "mlp", "consts", "channels", "deltas", "_ch_on")

    def __init__(self, att: Iterable[int], mlp: Iterable[int], consts: list[tuple[float, float, float, float]],
                 channels: torch.Tensor | None = None,
                 deltas: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.att, self.mlp, self.consts = frozenset(att), frozenset(mlp), consts
        self.channels, self.deltas = channels, deltas
        self._ch_on: dict[tuple, torch.Tensor] = {}  # the channel multipliers per (device, dtype) of activations

    def scales_on(self, x: torch.Tensor) -> list[tuple[float, float, float, float]]:
        return self.consts

    def channels_on(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.channels is None:
            return None
        key = (x.device, x.dtype)
        if key not in self._ch_on:
            self._ch_on[key] = _on(self.channels, x)
        return self._ch_on[key]

    def attn_skipped(self, idx: int) -> bool:
        return idx in self.att

    def mlp_skipped(self, idx: int) -> bool:
        return idx in self.mlp

    def delta(self, idx: int, part: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        got = self.deltas.get((idx, part)) if self.deltas else None
        return None if got is None else _pair_on(got, x)


class Rows:
    """per_row(): [B, L, 4] scalars, configuration r on batch row r, and the blocks skipped in every row (not
    computed; a block skipped in some rows only is computed and multiplied by b = 0 there). No channel
    multipliers, MLP skips or deltas per row."""

    __slots__ = ("rows", "att", "_on")

    def __init__(self, rows: torch.Tensor, att: Iterable[int]):
        self.rows, self.att = rows, frozenset(att)
        self._on: dict[tuple, torch.Tensor] = {}

    def scales_on(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.rows.shape[0]:
            raise HopscotchError(f"per_row() was given {self.rows.shape[0]} configurations but the batch has "
                                 f"{x.shape[0]} rows")
        key = (x.device, x.dtype)
        if key not in self._on:  # (L, 4, B, 1, 1): sc[idx, col] broadcasts over (B, T, C)
            self._on[key] = self.rows.permute(1, 2, 0)[..., None, None].to(device=x.device, dtype=x.dtype)
        return self._on[key]

    def channels_on(self, x: torch.Tensor) -> None:
        return None

    def attn_skipped(self, idx: int) -> bool:
        return idx in self.att

    def mlp_skipped(self, idx: int) -> bool:
        return False

    def delta(self, idx: int, part: str, x: torch.Tensor) -> None:
        return None


class Global:
    """The handle's own configuration, read live at each call: its scalars (under autograd the Parameter itself;
    without, the python floats the handle snapshots once per forward), skip lists, channel multipliers (granularity
    "channel") and low-rank deltas (views of the flat `lora` Parameter, one per call: the hooks' hot path)."""

    __slots__ = ("hs",)

    def __init__(self, hs):
        self.hs = hs

    def scales_on(self, x: torch.Tensor):
        hs = self.hs
        if hs._snapshot is not None and not torch.is_grad_enabled():
            return hs._snapshot
        s = hs.scales
        return s if s.device == x.device else s.to(x.device)

    def channels_on(self, x: torch.Tensor) -> torch.Tensor | None:
        hs = self.hs
        if hs.granularity != "channel":
            return None
        if torch.is_grad_enabled():  # the Parameter itself (float32), so that gradients reach it
            ch = hs.channel_scales
            return ch if ch.device == x.device else ch.to(x.device)
        return _on(hs.channel_scales.detach(), x)

    def attn_skipped(self, idx: int) -> bool:
        return idx in self.hs._skips[0]

    def mlp_skipped(self, idx: int) -> bool:
        return idx in self.hs._skips[2]

    def delta(self, idx: int, part: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        hs = self.hs
        if not hs.lora_rank:
            return None
        flat = hs.lora if torch.is_grad_enabled() else hs.lora.detach()
        return _pair_on(hs._slot_at[(idx, part)].view(flat, hs.lora_rank), x)  # this delta only


# ----------------------------------------------------------------------------------------------- resolution
def _mine(handle) -> Fixed | None:
    """The calling thread's own configuration of `handle` (in_thread), or None."""
    got = getattr(_THREAD, "cfg", None)
    return got.get(id(handle)) if got else None


def active(handle):
    """The reader a forward through `handle`'s model runs now, in this thread: the thread's own configuration
    (in_thread), else the batch's per-row configurations (per_row), else the handle's own state."""
    got = getattr(_THREAD, "cfg", None)
    mine = got.get(id(handle)) if got else None
    if mine is not None:
        return mine
    rows = handle._per_row
    return rows if rows is not None else handle._global


def fixed(handle, v: Variant) -> Fixed:
    """`v` checked against `handle`'s model and resolved for inference (channel multipliers and deltas on the
    handle's device; deltas need the handle's low-rank hooks, which this installs)."""
    blocks, mlp, eff = effective(v, handle.num_layers)
    ch = None
    if v.channel_scales is not None:
        ch = check_channel_scales(v.channel_scales, handle.num_layers, handle.hidden_size).to(handle.scales.device)
    deltas = None
    if v.lora:
        flat, rank = lowrank.from_state(v.lora, handle._slots())
        handle._ensure_lora_hooks()
        deltas = lowrank.views(flat.to(handle.scales.device), handle._slots(), rank)
    return Fixed(blocks, mlp, [tuple(row) for row in eff.tolist()], ch, deltas)


def set_thread(handle, cfg: Fixed | None) -> None:
    """Make `cfg` the calling thread's configuration of `handle` (None: the thread follows the handle again)."""
    if cfg is None:
        getattr(_THREAD, "cfg", {}).pop(id(handle), None)
        return
    if not hasattr(_THREAD, "cfg"):
        _THREAD.cfg = {}
    _THREAD.cfg[id(handle)] = cfg


def rows(variants: Iterable[Variant], num_layers: int) -> Rows:
    """A per-row reader: variant r on batch row r (attention skips and scalars only)."""
    stacked, common = [], None
    for v in variants:
        blocks, _, eff = effective(v, num_layers)
        stacked.append(eff)
        common = set(blocks) if common is None else common & set(blocks)
    if not stacked:
        raise HopscotchError("per_row() needs at least one configuration")
    return Rows(torch.stack(stacked), common or ())
