"""hopscotch_core: find and skip redundant attention blocks in decoder LMs (Hopscotch, arXiv 2506.03303).

    import hopscotch_core as hc
    model, tok = hc.load_model("default")
    hs = hc.attach(model)          # four float32 scalars per layer, all ones: the original model
    hs.skip([3, 7])                # attention of blocks 3 and 7 is no longer computed
    hs.save("adapter/")            # scales.safetensors + hopscotch.json
    small = hs.compact()           # a copy without those attention weights
    hc.save_model(small, "small/") # reload with hc.load_model("small/")
    hc.export(hs, "out/", format="hf")   # or "gguf" (llama.cpp) / "compact": see integrations/export.py
    hs.detach()                    # the model is exactly as loaded

Layout (each sub-package imports only what it needs, when it is first used):
    engine/        families, scaling (the handle), cache, generation, folding, loading, artifacts
    method/        settings (the one run-settings schema), data, training, selection, pipeline, runs (run store,
                   run states, exit codes, file names)
    measure/       metrics, evaluation, speed, info
    integrations/  export, gguf_export, llamacpp, lm_eval (lm-evaluation-harness)
    studio/        what the app shows: jobs (the job API), commands (command lines), runview, figures,
                   figexport, report, compare, drift, explain (the only part that imports pandas or plotly);
                   jobrunner, the job process body, which nothing imports
    cli, errors, fileio

`import hopscotch_core` is cheap: torch and transformers load with the first name that needs them. The core never
imports streamlit; the app and the CLI drive it through plain functions and callbacks.
"""

from __future__ import annotations

import importlib

from .errors import (
    AdapterMismatchError,
    ArtifactError,
    DataError,
    DetachedError,
    HopscotchError,
    InvalidBlocksError,
    InvalidScalesError,
    ModelNotAvailableError,
    SelectionError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_PUBLIC = {
    "SUPPORTED_FAMILIES": "engine.families", "get_adapter": "engine.families", "get_family": "engine.families",
    "export": "integrations.export",
    "load_model": "engine.loading", "save_model": "engine.loading",
    "COLUMNS": "engine.scaling", "Hopscotch": "engine.scaling", "attach": "engine.scaling",
    "compact_info": "engine.scaling", "handle_of": "engine.scaling", "load_adapter": "engine.scaling",
}

def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = [
    "COLUMNS",
    "SUPPORTED_FAMILIES",
    "AdapterMismatchError",
    "ArtifactError",
    "DataError",
    "DetachedError",
    "Hopscotch",
    "HopscotchError",
    "InvalidBlocksError",
    "InvalidScalesError",
    "ModelNotAvailableError",
    "SelectionError",
    "UnsupportedArchitectureError",
    "attach",
    "compact_info",
    "export",
    "get_adapter",
    "get_family",
    "handle_of",
    "load_adapter",
    "load_model",
    "save_model",
]
