"""Drawing helpers every page uses: errors with cause and fix, figures with their download buttons.

Streamlit glue only: the figures and their files come from hopscotch_core.studio (figures, figexport).
"""

from __future__ import annotations

from functools import partial

import streamlit as st

from hopscotch_core.studio import figexport
from hopscotch_core.studio.explain import explain

ERROR_ICON = ":material/error:"


def show_error(e: BaseException, doing: str = "") -> None:
    st.error(explain(e, doing), icon=ERROR_ICON)


def chart(fig, key: str, name: str | None = None, *, container=None) -> None:
    """`st.plotly_chart(fig, key=key)` and, under it, small download buttons PNG, SVG and CSV (keys `{key}_png`,
    `{key}_svg`, `{key}_csv`; files `{name}.png` ..., `name` defaults to `key`; `container`: a column or other
    container to draw in, default the current one).

    Nothing is rendered while the page draws: each file is made only when its button is clicked (Streamlit's
    deferred download, in a thread of its own, without a rerun). PNG/SVG come from hopscotch_core.studio.figexport (kaleido
    in a headless Chromium kept alive by the server: ~2 s for the first image, then ~0.3 s); where kaleido or a
    browser is missing they are disabled and their tooltip names the fix. CSV is the plotted numbers, one row per
    point (figexport.figure_csv)."""
    where = container if container is not None else st
    where.plotly_chart(fig, key=key)
    stem = figexport.file_stem(name or key)
    problem = figexport.image_export_problem()
    row = where.container(horizontal=True, gap="small", key=f"{key}_downloads")
    for fmt in figexport.FORMATS:
        row.download_button(fmt.upper(), partial(figexport.figure_image, fig, fmt), file_name=f"{stem}.{fmt}",
                            mime=figexport.MIME[fmt], key=f"{key}_{fmt}", on_click="ignore", type="tertiary",
                            icon=":material/download:", disabled=problem is not None,
                            help=f"Not available: {problem}" if problem else f"The figure as {fmt.upper()}")
    row.download_button("CSV", partial(figexport.figure_csv, fig), file_name=f"{stem}.csv", mime="text/csv",
                        key=f"{key}_csv", on_click="ignore", type="tertiary", icon=":material/download:",
                        help="The plotted numbers: one row per point (trace, x, y; z for heatmaps)")
