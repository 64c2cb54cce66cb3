"""Saving a handle's adapter and loading one onto a model (the files: artifacts.py).

`save(hs, dir)` writes the handle's configuration as it acts (b = 0 on skipped blocks); `load(attach, model,
dir)` reads it back as a Variant, after checking the adapter was made for this model, and applies it to a
new handle (`attach` makes the handle; scaling.py passes its own, so this module does not import it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from . import artifacts
from .variant import Variant, check_granularity
from ..constants import COLUMNS
from ..errors import AdapterMismatchError, LoraError


def save(hs, path: str | Path, objective: str | None = None) -> Path:
    """Hopscotch.save's work (see there)."""
    meta = {"kind": "adapter", "skipped": list(hs._skips[0]), "skipped_mlp": list(hs._skips[2]),
            "columns": list(COLUMNS), "base": artifacts.model_identity(hs.model),
            "granularity": hs.granularity, "objective": objective}
    return artifacts.write_artifact(path, hs.effective_scales(), meta,
                                    channel_scales=hs.effective_channel_scales(), lora=hs.lora_state())


def read(model: nn.Module, path: str | Path, granularity: str | None = None,
         lora_rank: int | None = None) -> Variant:
    """The adapter saved at `path` as a Variant, after checking it was made for `model` (and, when `granularity`
    / `lora_rank` are given, trained with them: AdapterMismatchError otherwise)."""
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
    return Variant.of(meta["skipped"], scales, meta.get("skipped_mlp", []),
                      artifacts.read_channel_scales(path, meta), artifacts.read_lora(path, meta))


def load(attach: Callable, model: nn.Module, path: str | Path, granularity: str | None = None,
         lora_rank: int | None = None):
    """load_adapter's work (see scaling.load_adapter): read, attach, apply; the handle is detached again when the
    adapter does not fit the model."""
    v = read(model, path, granularity, lora_rank)
    hs = attach(model)
    try:
        hs.skip(list(v.skipped))
        hs.skip_mlp(list(v.skipped_mlp))
        hs.set_scales(v.scales)
        if v.channel_scales is not None:
            hs.set_channel_scales(v.channel_scales)
        if v.lora:
            try:
                hs.set_lora(v.lora)
            except LoraError as e:
                raise AdapterMismatchError(f"the adapter at {path}: {e}") from None
    except Exception:
        hs.detach()
        raise
    return hs
