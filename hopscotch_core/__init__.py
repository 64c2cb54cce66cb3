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
import importlib.abc
import importlib.util
import sys

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

# Modules that lived directly in hopscotch_core before the sub-packages: `hopscotch_core.metrics`,
# `from hopscotch_core import metrics` and `import hopscotch_core.scaling` keep working and give the module itself.
_MOVED = {
    "adapters": "engine.families", "scaling": "engine.scaling", "cache": "engine.cache",
    "generation": "engine.generation", "folding": "engine.folding", "loading": "engine.loading",
    "artifacts": "engine.artifacts", "settings": "method.settings", "data": "method.data",
    "training": "method.training", "selection": "method.selection", "pipeline": "method.pipeline",
    "runs": "method.runs", "metrics": "measure.metrics", "evaluation": "measure.evaluation",
    "speed": "measure.speed", "info": "measure.info", "gguf_export": "integrations.gguf_export",
    "llamacpp": "integrations.llamacpp", "jobs": "studio.jobs", "runview": "studio.runview",
    "figures": "studio.figures", "figexport": "studio.figexport", "report": "studio.report",
    "compare": "studio.compare", "drift": "studio.drift", "explain": "studio.explain",
}
# (`hopscotch_core.export` is the function, as before; `hopscotch_core.lm_eval_adapter` is a module of its own,
# since `python -m hopscotch_core.lm_eval_adapter` is a command.)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `hopscotch_core.<old name>` to the module at its new place (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        pkg, _, name = fullname.rpartition(".")
        if pkg == __name__ and name in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    elif name in _MOVED:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC) | set(_MOVED))


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
