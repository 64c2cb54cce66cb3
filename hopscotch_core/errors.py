"""Exceptions raised by hopscotch_core.

Every error a user can cause has its own class with a message that says what was wrong and how to fix it.
They subclass the matching builtin (ValueError, FileNotFoundError, OSError) so generic handlers still work.
"""

from __future__ import annotations


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


class FigureExportError(HopscotchError, RuntimeError):
    """A static image (PNG/SVG) of a figure that cannot be made: kaleido or a Chrome/Chromium is missing, or the
    browser that renders it failed."""


def check_blocks(blocks, num_layers: int | None) -> None:
    """Attention blocks to train: whole numbers, no repeats, >= 0 (and < num_layers when known)."""
    if not blocks:
        raise InvalidBlocksError("give at least one attention block to skip")
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int):
            raise InvalidBlocksError(f"block index {b!r} is not a whole number")
        if b < 0:
            raise InvalidBlocksError(f"block index {b} is negative; blocks are numbered from 0")
        if num_layers is not None and b >= num_layers:
            raise InvalidBlocksError(f"block index {b} is out of range: this model has blocks 0..{num_layers - 1}")
    twice = sorted({b for b in blocks if list(blocks).count(b) > 1})
    if twice:
        raise InvalidBlocksError(f"block(s) {twice} given more than once")
