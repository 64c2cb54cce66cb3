"""On-disk formats: the adapter artifact (scales + skip set) and the identity of the model it belongs to.

An adapter directory holds two files:

    scales.safetensors   {"scales": float32 [num_layers, 4]}   columns b_att, s_att, b_mlp, s_mlp
                         + "channel_scales": float32 [num_layers, 2, hidden] with granularity "channel"
                         + "lora.L.attn.A" (R, in), "lora.L.attn.B" (out, R), ... with lora_rank R > 0
    hopscotch.json       {"format_version", "kind": "adapter" | "compact", "skipped", "base": identity,
                          "granularity": "scalar" | "channel", "objective": "ce" | "kl" | "ce+kl" | null,
                          "lora_rank": R, ...}

Artifacts written before granularity (or lora_rank) existed have no such field and read as "scalar" (and 0).

A compact model directory is a transformers model directory (config.json + model.safetensors, without the
weights of the removed attention blocks) plus the same two files with kind "compact".

The identity of a model is its family, layer count, a hash of the config fields that fix tensor shapes, and a
fingerprint of 64 fixed entries of the input embedding (compared with a tolerance, so a bf16 copy of the same
model matches and a different checkpoint of the same architecture does not).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..constants import GRANULARITIES, OBJECTIVES
from ..errors import AdapterMismatchError, ArtifactError
from ..fileio import atomic_write

FORMAT_VERSION = 1
META_FILE = "hopscotch.json"
SCALES_FILE = "scales.safetensors"
_SHAPE_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim",
)


def config_hash(model: torch.nn.Module) -> str:
    cfg = model.config.get_text_config().to_dict()
    fields = {k: cfg.get(k) for k in _SHAPE_KEYS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(model: torch.nn.Module, n: int = 64) -> list[float]:
    weight = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, weight.shape[0], (n,), generator=gen)
    cols = torch.randint(0, weight.shape[1], (n,), generator=gen)
    with torch.no_grad():
        vals = weight[rows.to(weight.device), cols.to(weight.device)].float().cpu()
    return [float(v) for v in vals]


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    cfg = model.config.get_text_config()
    return {
        "source": getattr(model, "_hopscotch_source", None) or getattr(model.config, "_name_or_path", None),
        "model_type": cfg.model_type,
        "num_layers": int(cfg.num_hidden_layers),
        "params": sum(p.numel() for p in model.parameters()),  # what run-time estimates scale by
        "config_hash": config_hash(model),
        "fingerprint": fingerprint(model),
    }


def check_identity(saved: dict[str, Any], model: torch.nn.Module, path: Path) -> None:
    """Raise AdapterMismatchError unless `model` is the model `saved` describes."""
    here = model_identity(model)
    what = f"the adapter at {path} was made for {saved.get('source') or 'another model'}"
    for key in ("model_type", "num_layers", "config_hash"):
        if saved.get(key) != here[key]:
            raise AdapterMismatchError(
                f"{what} ({key} {saved.get(key)!r}), but this model has {key} {here[key]!r}; "
                "load the model it was trained on"
            )
    a, b = torch.tensor(saved.get("fingerprint") or []), torch.tensor(here["fingerprint"])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=1e-3):
        raise AdapterMismatchError(
            f"{what}: same architecture, but the weights differ (embedding fingerprint mismatch); "
            "load the checkpoint it was trained on"
        )


def _atomic_write(path: Path, write) -> None:
    atomic_write(path, lambda tmp: write(Path(tmp)))


LORA_PREFIX = "lora."  # the low-rank deltas' names in scales.safetensors (and in a run's epoch files)


def write_artifact(path: str | os.PathLike, scales: torch.Tensor, meta: dict[str, Any],
                   channel_scales: torch.Tensor | None = None, lora: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an artifact directory; `lora`: low-rank deltas in Hopscotch.lora_state() form (or none)."""
    from .lowrank import rank_of

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"scales": scales.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()}
    if channel_scales is not None:
        tensors["channel_scales"] = channel_scales.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    for k, v in (lora or {}).items():
        tensors[LORA_PREFIX + k] = v.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    _atomic_write(path / SCALES_FILE, lambda p: save_file(tensors, str(p)))
    body = {"format_version": FORMAT_VERSION, "lora_rank": rank_of(lora or {}), **meta,
            "granularity": "channel" if channel_scales is not None else "scalar"}
    _atomic_write(path / META_FILE, lambda p: p.write_text(json.dumps(body, indent=2)))
    return path


def is_artifact(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_artifact(path: str | os.PathLike, kind: str | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read and validate (scales, meta); ArtifactError says exactly what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no Hopscotch artifact at {path}: the path does not exist")
    if not path.is_dir():
        raise ArtifactError(f"{path} is a file; a Hopscotch artifact is a directory holding {META_FILE}")
    meta_path, scales_path = path / META_FILE, path / SCALES_FILE
    for p in (meta_path, scales_path):
        if not p.is_file():
            raise ArtifactError(f"{path} is not a complete Hopscotch artifact: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{meta_path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path} has format_version {meta.get('format_version') if isinstance(meta, dict) else None!r}; "
            f"this hopscotch_core reads version {FORMAT_VERSION}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ArtifactError(f"{path} holds a Hopscotch {meta.get('kind')!r}, not an {kind!r}")
    try:
        scales = load_file(str(scales_path))["scales"]
    except (SafetensorError, KeyError, OSError) as e:
        raise ArtifactError(f"{scales_path} is corrupt or lacks the 'scales' tensor ({e})") from None
    base = meta.get("base") or {}
    n = base.get("num_layers")
    if scales.dtype != torch.float32 or scales.ndim != 2 or scales.shape[1] != 4 or scales.shape[0] != n:
        raise ArtifactError(
            f"{scales_path} holds {scales.dtype} {tuple(scales.shape)}; expected float32 ({n}, 4)"
        )
    if not torch.isfinite(scales).all():
        raise ArtifactError(f"{scales_path} contains NaN or inf")
    if meta.get("granularity", "scalar") not in GRANULARITIES:
        raise ArtifactError(f"{meta_path}: unknown granularity {meta.get('granularity')!r}; this hopscotch_core "
                            f"knows {', '.join(GRANULARITIES)}")
    if meta.get("objective") not in (None, *OBJECTIVES):
        raise ArtifactError(f"{meta_path}: unknown objective {meta.get('objective')!r}; this hopscotch_core "
                            f"knows {', '.join(OBJECTIVES)}")
    rank = meta.get("lora_rank", 0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ArtifactError(f"{meta_path}: lora_rank must be a whole number >= 0, not {rank!r}")
    for key in ("skipped", "skipped_mlp"):
        blocks = meta.get(key, [] if key == "skipped_mlp" else None)
        if not isinstance(blocks, list) or not all(isinstance(i, int) and 0 <= i < n for i in blocks) \
                or len(set(blocks)) != len(blocks):
            raise ArtifactError(f"{meta_path}: '{key}' must be a list of distinct block indices in [0, {n})")
    return scales, meta


def read_channel_scales(path: str | os.PathLike, meta: dict[str, Any]) -> torch.Tensor | None:
    """The per-channel multipliers [num_layers, 2, hidden] of an artifact with granularity "channel" (None for
    "scalar"); ArtifactError when the file lacks them or they are malformed."""
    if meta.get("granularity", "scalar") != "channel":
        return None
    scales_path = Path(path) / SCALES_FILE
    try:
        ch = load_file(str(scales_path)).get("channel_scales")
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{scales_path} is corrupt ({e})") from None
    n = (meta.get("base") or {}).get("num_layers")
    if ch is None:
        raise ArtifactError(f"{scales_path} lacks 'channel_scales', but {META_FILE} says granularity 'channel'")
    if ch.dtype != torch.float32 or ch.ndim != 3 or ch.shape[0] != n or ch.shape[1] != 2:
        raise ArtifactError(f"{scales_path}: channel_scales is {ch.dtype} {tuple(ch.shape)}; expected float32 "
                            f"({n}, 2, hidden)")
    if not torch.isfinite(ch).all():
        raise ArtifactError(f"{scales_path}: channel_scales contains NaN or inf")
    return ch


def read_lora(path: str | os.PathLike, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The low-rank deltas of an artifact ({} when its lora_rank is 0); ArtifactError when the file lacks them or
    their rank is not the one hopscotch.json records. (Whether they fit a model: Hopscotch.set_lora.)"""
    from .lowrank import rank_of, split_state

    rank = meta.get("lora_rank", 0)
    if not rank or meta.get("kind") == "compact":  # a compact model holds them merged into its weights
        return {}
    scales_path = Path(path) / SCALES_FILE
    try:
        tensors = load_file(str(scales_path))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{scales_path} is corrupt ({e})") from None
    state = split_state(tensors, LORA_PREFIX)
    if not state or rank_of(state) != rank:
        raise ArtifactError(f"{scales_path} holds low-rank deltas of rank {rank_of(state)}, but {META_FILE} says "
                            f"lora_rank {rank}")
    return state
