"""Write a model as a Hugging Face checkpoint folder, one tensor at a time.

    write_checkpoint(model, "out/")     # config.json, generation_config.json, model.safetensors

What `save_pretrained` writes for the families here (same tensor names, same bytes, one file), but streamed: the
safetensors header is computed from the shapes first, then each tensor's bytes go straight from the model's
memory to the file, so the only extra memory is one non-contiguous tensor made contiguous (save_pretrained builds
every shard's bytes in memory before writing it: twice the model). Tensors that share storage (tied input and
output embeddings) are written once, under the first name, as save_pretrained does; transformers ties them again
on load. Files get the normal mode (fileio.atomic_write), not a temporary file's 0600.

The safetensors layout: 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}},
padded with spaces to a multiple of 8, then the raw little-endian tensor bytes in header order.
"""

from __future__ import annotations

import copy
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from ..fileio import atomic_write

WEIGHTS_FILE = "model.safetensors"
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def unique_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the model's state dict, each storage once (tied weights under their first name)."""
    seen: set[tuple[int, tuple, tuple]] = set()
    out = []
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), tuple(t.shape), t.stride())
        if key in seen:
            continue
        seen.add(key)
        out.append((name, t))
    return out


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, torch.Tensor]],
                      metadata: dict[str, str] | None = None) -> Path:
    """Stream `tensors` into one safetensors file at `path` (atomically: a reader never sees half a file)."""
    items = list(tensors)
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    at = 0
    for name, t in items:
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name} has dtype {t.dtype}, which safetensors does not store")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + n]}
        at += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, t in items:
                t = t.detach().cpu().contiguous().reshape(-1)
                f.write(t.view(torch.uint8).numpy().data if t.numel() else b"")

    return atomic_write(path, write)


def write_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """config.json, generation_config.json (when the model generates) and model.safetensors of `model` in the
    existing folder `path`; stock AutoModelForCausalLM.from_pretrained(path) loads it."""
    path = Path(path)
    cfg = copy.deepcopy(model.config)
    for attr in ("quantization_config", "hf_quantizer"):  # a de-quantized GGUF load keeps these markers
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    cfg.architectures = [type(model).__name__]
    cfg.dtype = next(model.parameters()).dtype
    atomic_write(path / "config.json", cfg.to_json_string(use_diff=True))
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        atomic_write(path / "generation_config.json", gen.to_json_string(use_diff=True))
    write_safetensors(path / WEIGHTS_FILE, unique_tensors(model))
    return path
