"""What the Model page shows of a model before it is loaded: its summary and singular values as last computed from
the same weights (kept on disk by info.summary and metrics.singular_values), read without torch.

    cached_summary(source_stamp("default"))            # dict, or None when never computed
    cached_singular_values(stamp)                      # DataFrame, or None
"""

from __future__ import annotations

from typing import Any

from ..engine.stamps import read_derived


def cached_summary(stamp: str | None) -> dict[str, Any] | None:
    """info.summary() of the model with this weights stamp (stamps.source_stamp) as last computed, without the
    model."""
    return read_derived("summary", stamp)


def cached_singular_values(stamp: str | None, top_k: int | None = None):
    """metrics.singular_values() of the model with this weights stamp (stamps.source_stamp), read from the disk
    cache without the model; None when it was never computed."""
    import pandas as pd

    rows = (read_derived(f"singular-values-{top_k or 0}", stamp) or {}).get("rows")
    return None if rows is None else pd.DataFrame(rows)
