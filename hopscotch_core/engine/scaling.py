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

This module is the handle's face (its state and public API); the work is split by concern, the way PEFT splits
a tuner: the layer formula (formula.py), which configuration a forward runs, the handle's own, the calling
thread's in_thread() or the batch's per_row() (variant.py), the low-rank hooks (lowrank.py), compaction
(compaction.py) and the adapter files (adapter_io.py).

    import hopscotch_core as hc
    model, tok = hc.load_model("default")
    with hc.attach(model) as hs:
        hs.skip([3, 7])
        out = model.generate(**tok("2+2=", return_tensors="pt"), max_new_tokens=8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import adapter_io, compaction, lowrank
from .variant import Global, Rows, Variant, active, fixed, rows, set_thread
from ..errors import DetachedError, HopscotchError, InvalidScalesError

# Every name this module has offered stays importable from here (each now lives in the module of its concern)
from .cache import cache_kwarg, record_skipped  # noqa: F401
from .compaction import _COMPACT_ATTR, CompactInfo, RemovedBlock, compact_info, install_compact  # noqa: F401
from .families import ModelFamily, fold_scale, get_family  # noqa: F401
from .formula import _combine, _layer_forward, _scaled  # noqa: F401
from .variant import _THREAD, _as_blocks, _mine, check_channel_scales, check_granularity  # noqa: F401
from ..constants import COLUMNS, GRANULARITIES  # noqa: F401
from ..errors import AdapterMismatchError, InvalidBlocksError  # noqa: F401

_cache_kwarg = cache_kwarg  # its old name here
_HANDLE_ATTR = "_hopscotch"


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
        # which configuration a forward runs (variant.active): the handle's own state, read live, unless the calling
        # thread has its own (in_thread) or a per_row() block gives one per batch row
        self._global = Global(self)
        self._per_row: Rows | None = None
        decoder = model.get_decoder()
        self._snap_hooks = (decoder.register_forward_pre_hook(self._take_snapshot),
                            decoder.register_forward_hook(self._drop_snapshot))
        for i, layer in enumerate(layers):
            layer.forward = _layer_forward(family, layer, i, self)
        setattr(model, _HANDLE_ATTR, self)

    # ----------------------------------------------------------------------------------------- internals
    _active = active  # the reader of the configuration this call runs, for the layers and the low-rank hooks

    @property
    def _rows(self) -> torch.Tensor | None:
        """per_row()'s [B, L, 4] scalars while it is active, else None."""
        return None if self._per_row is None else self._per_row.rows

    def _take_snapshot(self, *_: Any) -> None:
        if torch.is_grad_enabled():
            self._snapshot = None
        else:
            self._snapshot = [tuple(row) for row in self.scales.detach().tolist()]

    def _drop_snapshot(self, *_: Any) -> None:
        self._snapshot = None

    def _delta(self, idx: int, part: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) of the low-rank delta on layer idx's `part` projection as it acts now in this thread, or None."""
        return self._active().delta(idx, part, x)

    def _slots(self) -> list[lowrank.Slot]:
        if self._lora_slots is None:
            self._lora_slots = lowrank.layout(self.family)
            self._slot_at = {(s.layer, s.part): s for s in self._lora_slots}
        return self._lora_slots

    def _ensure_lora_hooks(self) -> None:
        if not self._lora_hooks:
            self._lora_hooks = lowrank.add_hooks(self.family, self._delta)

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
        v = Variant.of(skipped, scales, skipped_mlp, channel_scales, lora)
        self.skip(list(v.skipped)).skip_mlp(list(v.skipped_mlp))
        if v.scales is not None:
            self.set_scales(v.scales)
        if v.channel_scales is not None:
            self.set_channel_scales(v.channel_scales)
        if v.lora:
            self.set_lora(v.lora)
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
        set_thread(self, fixed(self, Variant.of(skipped, scales, channel_scales=channel_scales, lora=lora)))
        try:
            yield self
        finally:
            set_thread(self, None)

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
        self._per_row = rows((Variant.of(skipped, scales) for skipped, scales in configs), self.num_layers)
        try:
            yield self
        finally:
            self._per_row = None

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
        return adapter_io.save(self, path, objective)

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
        return compaction.compact(self, fold, share)


def attach(model: nn.Module) -> Hopscotch:
    """Attach Hopscotch scalars (all ones) to a supported causal LM; see `Hopscotch`."""
    return Hopscotch(model)


def handle_of(model: nn.Module) -> Hopscotch | None:
    """The Hopscotch handle attached to `model`, if any."""
    return getattr(model, _HANDLE_ATTR, None)


def load_adapter(model: nn.Module, path: str | Path, granularity: str | None = None,
                 lora_rank: int | None = None) -> Hopscotch:
    """Attach the adapter saved at `path` to `model`, after checking it was made for this model (and, when
    `granularity` / `lora_rank` are given, trained with them: AdapterMismatchError otherwise)."""
    return adapter_io.load(attach, model, path, granularity, lora_rank)
