"""hopscotch_core: find and skip redundant attention blocks in decoder LMs (Hopscotch, arXiv 2506.03303).

    import hopscotch_core as hc
    model, tok = hc.load_model("default")
    hs = hc.attach(model)          # four float32 scalars per layer, all ones: the original model
    hs.skip([3, 7])                # attention of blocks 3 and 7 is no longer computed
    hs.save("adapter/")            # scales.safetensors + hopscotch.json
    small = hs.compact()           # a copy without those attention weights
    hc.save_model(small, "small/") # reload with hc.load_model("small/")
    hc.export(hs, "out/", format="hf")   # or "gguf" (llama.cpp) / "compact": see export.py
    hs.detach()                    # the model is exactly as loaded

The core never imports streamlit; the app and the CLI drive it through plain functions and callbacks.
"""

from .adapters import SUPPORTED_FAMILIES, get_adapter
from .errors import (
    AdapterMismatchError,
    ArtifactError,
    DetachedError,
    HopscotchError,
    InvalidBlocksError,
    InvalidScalesError,
    ModelNotAvailableError,
    UnsupportedArchitectureError,
)
from .export import export
from .loading import load_model, save_model
from .scaling import COLUMNS, Hopscotch, attach, compact_info, handle_of, load_adapter

__version__ = "0.1.0"

__all__ = [
    "COLUMNS",
    "SUPPORTED_FAMILIES",
    "AdapterMismatchError",
    "ArtifactError",
    "DetachedError",
    "Hopscotch",
    "HopscotchError",
    "InvalidBlocksError",
    "InvalidScalesError",
    "ModelNotAvailableError",
    "UnsupportedArchitectureError",
    "attach",
    "compact_info",
    "export",
    "get_adapter",
    "handle_of",
    "load_adapter",
    "load_model",
    "save_model",
]
