"""Exceptions raised by hopscotch_core.

Every exception class of the package lives here, grouped by the part that raises it; each module that raises one
imports it from here (and keeps the name, so `from hopscotch_core.method.runs import RunError` still works).
Every error a user can cause has its own class with a message that says what was wrong and how to fix it.
They subclass the matching builtin (ValueError, FileNotFoundError, OSError) so generic handlers still work.
This module imports nothing (no torch, no transformers): anything may import it.
"""

from __future__ import annotations

import operator


class HopscotchError(Exception):
    """Base class for every error hopscotch_core raises on purpose."""


class UnsupportedArchitectureError(HopscotchError, ValueError):
    """The model's family has no adapter."""


class InvalidBlocksError(HopscotchError, ValueError):
    """A block index that is out of range, negative, duplicated or not an integer."""


class InvalidScalesError(HopscotchError, ValueError):
    """Scales of the wrong shape, or containing NaN/inf."""


class ArtifactError(HopscotchError, ValueError):
    """A saved adapter or compact model that is missing, corrupt or of an unknown format."""


class AdapterMismatchError(ArtifactError):
    """An adapter saved for one model and loaded onto another."""


class ModelNotAvailableError(HopscotchError, OSError):
    """A model that cannot be found locally and cannot be downloaded."""


class DetachedError(HopscotchError, RuntimeError):
    """A Hopscotch handle used after `detach()`."""


class SelectionError(HopscotchError, ValueError):
    """Bad selection settings: k out of range, unknown mode, shortlist ranking or baseline."""


class DataError(HopscotchError, ValueError):
    """A data file or source that cannot be used: missing, empty, malformed, or without the asked column."""


# engine: the handle's low-rank deltas, folding the scalars into the weights


class LoraError(HopscotchError, ValueError):
    """A low-rank setting or state that does not fit this model."""


class FoldError(HopscotchError, ValueError):
    """The scalars cannot be folded exactly into this family's weights."""


# method: the run store, processes that train together


class RunError(HopscotchError, ValueError):
    """A run name, runs root or resume that cannot be used."""


class DistributedError(HopscotchError, RuntimeError):
    """The process group cannot start or lost a process (a rank died, the network failed, a timeout)."""


class SharedError(HopscotchError):
    """An error every rank raises with the same message (the CLI prints it on rank 0 only)."""


# measure: metrics, evaluation, speed, kept answers, benchmarks


class MetricError(HopscotchError, ValueError):
    """Input a metric cannot be computed on (too few samples, mismatched shapes, bad layer index)."""


class EvalError(HopscotchError, ValueError):
    """A run that cannot be evaluated (yet)."""


class SpeedError(HopscotchError, ValueError):
    """Settings a measurement cannot run with."""


class AnswersError(HopscotchError, ValueError):
    """Answers kept cannot be measured as asked."""


class BenchmarkError(HopscotchError, ValueError):
    """A benchmark name or setting that cannot be scored (unknown name, shots, limit)."""


class BenchmarkUnavailableError(HopscotchError, ImportError):
    """The package that holds a benchmark's data is not installed."""


# integrations: exports (hf, compact, GGUF, Nemotron-NAS/DeciLM), lm-evaluation-harness


class ExportError(HopscotchError, ValueError):
    """Bad export input (format, quantization, output folder, source)."""


class GGUFExportError(HopscotchError, ValueError):
    """This model or skip set cannot be written as a llama.cpp GGUF (the message says why)."""


class LlamaCppMissingError(HopscotchError, ImportError):
    """llama-cpp-python is not installed."""


class DeciExportError(HopscotchError, ValueError):
    """This model or skip set cannot be written in the Nemotron-NAS / DeciLM layout (the message says why)."""


class LMEvalError(HopscotchError, ValueError):
    """lm-evaluation-harness cannot run what was asked: unknown task, bad model arguments."""


class LMEvalUnavailableError(HopscotchError, ImportError):
    """The optional `lm_eval` package is not installed."""


# studio: figures, jobs, the GGUF side of side-by-side


class FigureExportError(HopscotchError, RuntimeError):
    """A static image (PNG/SVG) of a figure that cannot be made: kaleido or a Chrome/Chromium is missing, or the
    browser that renders it failed."""


class JobError(HopscotchError, ValueError):
    """A job that cannot be started, stopped or deleted as asked."""


class GGUFDemoError(HopscotchError, ValueError):
    """A side-by-side request the GGUF side cannot serve (the message says why and what to do)."""


def check_blocks(blocks, num_layers: int | None, allow_empty: bool = False) -> list[int]:
    """Block indices, as a list of ints: whole numbers (anything with __index__ but a bool), no repeats, >= 0 and
    < num_layers when known; InvalidBlocksError otherwise. The one rule for block lists: the run settings (which
    refuse an empty list: there must be a block to train) and a handle's skip set (`allow_empty=True`)."""
    if not blocks and not allow_empty:
        raise InvalidBlocksError("give at least one attention block to skip")
    out = []
    for b in blocks:
        try:
            i = operator.index(b)
        except TypeError:
            i = None
        if i is None or isinstance(b, bool):
            raise InvalidBlocksError(f"block index {b!r} is not a whole number")
        if i < 0:
            raise InvalidBlocksError(f"block index {i} is negative; blocks are numbered from 0")
        if num_layers is not None and i >= num_layers:
            raise InvalidBlocksError(f"block index {i} is out of range: this model has blocks 0..{num_layers - 1}")
        out.append(i)
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise InvalidBlocksError(f"block(s) {twice} given more than once")
    return out
