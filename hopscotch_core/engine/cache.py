"""KV-cache bookkeeping for skipped attention blocks.

A skipped attention block computes nothing, so it has no keys or values to cache. Stock transformers, however,
reads the cache's sequence length from layer 0 (`Cache.get_seq_length()`), and builds attention masks from the
first layer of each attention type: if those layers never call `update`, the cache reports length 0 and
incremental decoding silently uses wrong positions and masks.

The fix keeps stock `DynamicCache` objects and changes only the cache layers of skipped blocks: the first time a
skipped block sees a cache layer, that layer's class is swapped for a subclass that counts tokens instead of
storing them. Its `keys`/`values` become zero-stride views of a single scalar (`expand`), so every stock method
that reads a length or a shape still works, and the layer holds no memory per token. Cache layers of other kinds
(static, quantized, offloaded) get a placeholder update of shape [B, 1, T, 1] through their own `update`, which
keeps their bookkeeping right at one element per token.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


class _Counting:
    """Methods given to subclasses of DynamicLayer / DynamicSlidingWindowLayer: track length, store nothing.

    (Copied into single-base subclasses below rather than mixed in: `__class__` assignment needs the subclass
    to keep the stock layer's instance layout, which a second base breaks.)
    """

    _hs_counting = True
    _hs_anchor: torch.Tensor

    def _hs_view(self, batch: int, length: int) -> torch.Tensor:
        return self._hs_anchor.expand(batch, 1, length, 1)  # (B, 1, T, 1), stride 0: no storage

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        batch, new = key_states.shape[0], key_states.shape[-2]
        if not self.is_initialized:
            self.device = key_states.device
            self._hs_anchor = torch.zeros((), dtype=key_states.dtype, device=key_states.device)
            self._hs_total = 0
            self.is_initialized = True
        self._hs_total += new
        if isinstance(self, DynamicSlidingWindowLayer):
            self.cumulative_length += new
        self.keys = self.values = self._hs_view(batch, self._hs_total)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if not self.is_initialized or tokens_to_remove == 0:
            return
        if tokens_to_remove > 0:  # legacy meaning: keep this many tokens
            tokens_to_remove = tokens_to_remove - self._hs_total
        self._hs_total = max(self._hs_total + tokens_to_remove, 0)
        if isinstance(self, DynamicSlidingWindowLayer):
            self.cumulative_length = self._hs_total
        self.keys = self.values = self._hs_view(self.keys.shape[0], self._hs_total)

    def _hs_rebatch(self, batch: int) -> None:
        if self.is_initialized:
            self.keys = self.values = self._hs_view(batch, self._hs_total)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._hs_rebatch(self.keys.shape[0] * repeats if self.is_initialized else 0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._hs_rebatch(len(indices))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._hs_rebatch(len(beam_idx))

    def offload(self) -> None:
        pass

    def prefetch(self) -> None:
        pass

    def reset(self) -> None:
        if self.is_initialized:
            self._hs_total = 0
            self.keys = self.values = self._hs_view(self.keys.shape[0], 0)
        if isinstance(self, DynamicSlidingWindowLayer):
            self.cumulative_length = 0


def _counting_subclass(base: type, doc: str) -> type:
    body = {k: v for k, v in vars(_Counting).items() if not k.startswith("__") or k == "__doc__"}
    return type(f"Skipped{base.__name__}", (base,), {**body, "__slots__": (), "__doc__": doc,
                                                     "__module__": __name__})


SkippedDynamicLayer = _counting_subclass(DynamicLayer, "Cache layer of a skipped full-attention block.")
SkippedDynamicSlidingWindowLayer = _counting_subclass(
    DynamicSlidingWindowLayer, "Cache layer of a skipped sliding-window block (mask sizes follow the window)."
)


_SWAP = {DynamicLayer: SkippedDynamicLayer, DynamicSlidingWindowLayer: SkippedDynamicSlidingWindowLayer}


def record_skipped(cache: Any, layer_idx: int, hidden: torch.Tensor) -> None:
    """Advance the cache of a skipped block by hidden.shape[1] tokens without storing keys or values."""
    batch, new = hidden.shape[0], hidden.shape[1]
    if getattr(cache, "layer_class_to_replicate", None) is not None:
        while len(cache.layers) <= layer_idx:
            cache.layers.append(cache.layer_class_to_replicate())
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers):
        return
    layer = layers[layer_idx]
    swap = _SWAP.get(type(layer))
    if swap is not None:
        if layer.is_initialized:
            raise RuntimeError(
                f"this KV cache already holds keys for attention block {layer_idx}, which is now skipped: "
                "a cache must not outlive a change of the skip set; start generation with a fresh cache"
            )
        layer.__class__ = swap
    placeholder = torch.zeros((), dtype=hidden.dtype, device=hidden.device).expand(batch, 1, new, 1)
    cache.update(placeholder, placeholder, layer_idx)


def cache_kwarg(target: Any) -> str:
    """The name under which a forward takes the KV cache: `cache` (transformers >= 5.24) or `past_key_values`
    (earlier 5.x). `target`: a forward function or bound method (a model's `model.forward`), or a module, whose
    class's own forward is read (a decoder layer, whatever its instance forward has been replaced with)."""
    fn = type(target).forward if isinstance(target, nn.Module) else target
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def cache_bytes(cache: Any) -> list[int]:
    """Bytes of storage each cache layer holds (0 for a skipped block's counting layer)."""
    out = []
    for layer in getattr(cache, "layers", []):
        total = 0
        if getattr(layer, "is_initialized", False) and not getattr(layer, "_hs_counting", False):
            for t in (layer.keys, layer.values):
                if isinstance(t, torch.Tensor):
                    total += t.untyped_storage().nbytes()
        out.append(total)
    return out
