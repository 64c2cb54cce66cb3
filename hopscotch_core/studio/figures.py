"""Plotly figures for the app: pure functions from tables (pandas / lists / tensors) to `go.Figure`.

    fig = singular_value_heatmap(metrics.singular_values(model), log_color=True)
    fig = elbow(RunView(d).rounds(), RunView(d).overlay())
    fig = candidate_heatmap(RunView(d).scores(), num_layers=30, rounds=RunView(d).rounds())

No I/O and no model calls: what a figure shows is exactly its arguments (tests compare a figure's data with the
table it was drawn from). Layers and blocks are 0-based, as everywhere in hopscotch_core.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..constants import COLUMNS

SCALE_COLUMNS = COLUMNS  # the old name, which tests and callers use
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
            "#bcbd22")
# The legend stands right of the plot area, outside it (plotly widens the right margin to fit it), where it covers
# neither the plot nor an axis title; a horizontal legend below the plot covered the x-axis title.
_LAYOUT = {"margin": {"l": 50, "r": 20, "t": 50, "b": 45}, "template": "plotly_white",
           "legend": {"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top",
                      "font": {"size": 11}}}


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#777"})
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, **{**_LAYOUT, "height": 300})
    return fig


# ------------------------------------------------------------------------------------------------ model
def singular_value_heatmap(df: pd.DataFrame, log_color: bool = False) -> go.Figure:
    """Layers (rows) x weight matrices (columns), colour = largest singular value (sigma_max); with
    `log_color`, the colour scale is log10 while the hover still shows the value itself."""
    title = "Largest singular value of each weight matrix"
    if df is None or not len(df):
        return _empty(title, "no weight matrices")
    matrices = list(dict.fromkeys(df["matrix"]))  # in model order (q, k, v, o, gate, up, down)
    table = df.pivot_table(index="layer", columns="matrix", values="sigma_max", aggfunc="first")[matrices]
    values = table.to_numpy(dtype=float)
    z = np.log10(np.clip(values, 1e-12, None)) if log_color else values
    fig = go.Figure(go.Heatmap(
        z=z, x=matrices, y=list(table.index), customdata=values, colorscale="Viridis",
        hovertemplate="layer %{y}, %{x}<br>sigma_max = %{customdata:.4g}<extra></extra>",
        colorbar={"title": "log10 σ_max" if log_color else "σ_max"},
    ))
    fig.update_layout(title=title + (" (log colour)" if log_color else ""), xaxis_title="weight matrix",
                      yaxis_title="layer", height=max(320, 18 * len(table) + 120),
                      **{k: v for k, v in _LAYOUT.items() if k != "legend"})
    fig.update_yaxes(autorange="reversed", dtick=1 if len(table) <= 32 else None)
    return fig


# ------------------------------------------------------------------------------------------------ selection
def objective_label(objective: str = "ce", kl_weight: float = 1.0) -> str:
    """What a loss of `objective` is, for an axis title."""
    if objective == "kl":
        return "KL(original ‖ modified) per token"
    if objective == "ce+kl":
        return f"NLL + {kl_weight:g} × KL per token"
    return "loss (mean NLL per token)"


def elbow(rounds: pd.DataFrame, overlay: pd.DataFrame | None = None, title: str | None = None,
          knee: bool = True, objective: str = "ce", kl_weight: float = 1.0) -> go.Figure:
    """The elbow curve: x = attention blocks removed, y = the best candidate's loss in that selection round
    (one epoch of scalar training on the calibration data). `overlay` adds held-out losses at k blocks
    (hopscotch and each baseline, trained = filled marker, unscaled = open) and the original model's held-out
    loss as a dashed line. All of them are values of the run's `objective` (ce | kl | ce+kl with `kl_weight`:
    RunView.objective() and .overlay()), which the y-axis names. With `knee`, the k that selection.suggest_k
    suggests (Kneedle) is marked: a star on the curve named "suggested k = N" and a dashed vertical line
    (nothing when the curve has no knee)."""
    what = objective_label(objective, kl_weight)
    title = title or f"Elbow: best {'loss' if objective == 'ce' else objective} per removed block"
    has_rounds = rounds is not None and len(rounds) > 0
    has_overlay = overlay is not None and len(overlay) > 0
    if not has_rounds and not has_overlay:
        return _empty(title, "no selection rounds yet")
    fig = go.Figure()
    if has_rounds:
        fig.add_trace(go.Scatter(
            x=list(rounds["n_removed"]), y=list(rounds["loss"]), mode="lines+markers+text", name="selection "
            "(calibration, best candidate)", text=[f"{int(b)}" for b in rounds["removed"]], textposition="top "
            "center", customdata=list(rounds["removed"]), line={"color": _color(0), "width": 3},
            hovertemplate="%{x} removed (last: block %{customdata})<br>" + objective + " %{y:.4f}<extra></extra>"))
    if has_overlay:
        orig = overlay[overlay["method"] == "original"]
        if len(orig):
            right = max([*overlay["k"], *(rounds["n_removed"] if has_rounds else []), 1]) + 0.3
            y0 = float(orig["loss"].iloc[0])
            fig.add_trace(go.Scatter(x=[0.7, right], y=[y0, y0], mode="lines", name="original (held-out)",
                                     line={"color": "#555", "dash": "dash"},
                                     hovertemplate="original model<br>held-out " + objective + " %{y:.4f}<extra></extra>"))
        methods = [m for m in dict.fromkeys(overlay["method"]) if m != "original"]
        for i, method in enumerate(methods):
            for scaled in (True, False):
                part = overlay[(overlay["method"] == method) & (overlay["scaled"] == scaled)]
                if not len(part):
                    continue
                fig.add_trace(go.Scatter(
                    x=list(part["k"]), y=list(part["loss"]), mode="markers",
                    name=f"{method} {'trained' if scaled else 'unscaled'} (held-out)",
                    marker={"size": 12, "color": _color(i + 1 if method != "hopscotch" else 0),
                                "symbol": "circle" if scaled else "circle-open", "line": {"width": 2}},
                    customdata=[", ".join(str(b) for b in bl) for bl in part["blocks"]],
                    hovertemplate=f"{method} {'trained' if scaled else 'unscaled'}<br>k = %{{x}}, blocks "
                                  "%{customdata}<br>held-out " + objective + " %{y:.4f}<extra></extra>"))
    if has_rounds and knee:
        from ..method.selection import suggest_k

        k, reason = suggest_k(rounds)
        at = rounds[rounds["n_removed"] == k] if k is not None else rounds.iloc[:0]
        if len(at):
            fig.add_vline(x=k, line_dash="dash", line_color="#666", line_width=1.5)
            fig.add_trace(go.Scatter(
                x=[k], y=[float(at["loss"].iloc[0])], mode="markers", name=f"suggested k = {k}",
                marker={"symbol": "star", "size": 18, "color": "#ffd700", "line": {"color": "black", "width": 1}},
                hovertext=[reason], hovertemplate="%{hovertext}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="attention blocks removed", yaxis_title=what,
                      height=420, **_LAYOUT)
    fig.update_xaxes(dtick=1)
    _log_if_spread(fig, f"{what} (log scale)")
    return fig


def _log_if_spread(fig: go.Figure, title: str) -> None:
    """A log y-axis (plain tick labels) when the values span more than 4x: a far-off baseline would otherwise
    flatten every other curve."""
    values = [float(v) for t in fig.data for v in t.y if v is not None and np.isfinite(float(v))]
    lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
    if lo > 0 and hi / lo > 4:
        ticks = [m * 10**e for e in range(-3, 4) for m in (1, 2, 3, 5) if lo / 1.5 <= m * 10**e <= hi * 1.5]
        fig.update_yaxes(type="log", title=title, tickvals=ticks, ticktext=[f"{t:g}" for t in ticks],
                         minor={"showgrid": False})


def elbows(curves: Mapping[str, pd.DataFrame], title: str = "Elbow curves") -> go.Figure:
    """Several runs' elbow curves (best loss per removed block) on one set of axes, one colour per run."""
    curves = {k: v for k, v in curves.items() if v is not None and len(v)}
    if not curves:
        return _empty(title, "no selection rounds in these runs")
    fig = go.Figure()
    for i, (label, rounds) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=list(rounds["n_removed"]), y=list(rounds["loss"]), mode="lines+markers",
                                 name=label, line={"color": _color(i)}, customdata=list(rounds["removed"]),
                                 hovertemplate=label + "<br>%{x} removed (last: block %{customdata})<br>"
                                 "loss %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="attention blocks removed", yaxis_title="best candidate loss",
                      height=400, **_LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


def candidate_heatmap(scores: pd.DataFrame, num_layers: int, rounds: pd.DataFrame | None = None,
                      kind: str = "paper", label: str = "loss") -> go.Figure:
    """Selection round (rows) x attention block (columns), colour = that candidate's score of `kind` in that
    round (paper: loss after one epoch of scalar training; shortlist: fast mode's cheap ranking) (empty: not
    scored, already removed or not shortlisted); the block chosen in each round is marked with a star."""
    title = f"Candidate {label} per round and block (★ = removed)"
    part = scores[scores["kind"] == kind] if scores is not None and len(scores) else pd.DataFrame()
    if not len(part):
        return _empty(title, "no candidate scores yet")
    n_rounds = int(part["round"].max()) + 1
    z = np.full((n_rounds, num_layers), np.nan)
    for r in part.itertuples():
        if 0 <= int(r.candidate) < num_layers:
            z[int(r.round), int(r.candidate)] = float(r.loss)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(num_layers)), y=list(range(n_rounds)), colorscale="RdYlGn_r", hoverongaps=False,
        colorbar={"title": label}, hovertemplate=f"round %{{y}}, block %{{x}}<br>{label} %{{z:.4f}}<extra></extra>"))
    if rounds is not None and len(rounds):
        fig.add_trace(go.Scatter(
            x=[int(b) for b in rounds["removed"]], y=[int(r) for r in rounds["round"]], mode="markers",
            name="removed", showlegend=False,
            marker={"symbol": "star", "size": 16, "color": "white", "line": {"color": "black", "width": 1.5}},
            hovertemplate="round %{y}: removed block %{x}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="attention block", yaxis_title="round",
                      height=max(260, 34 * n_rounds + 160), **{k: v for k, v in _LAYOUT.items() if k != "legend"})
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(dtick=1 if num_layers <= 12 else max(2, round(num_layers / 10)))
    return fig


# ------------------------------------------------------------------------------------------------ scaling
def loss_curves(epochs: pd.DataFrame, title: str = "Scale training: loss per epoch") -> go.Figure:
    """Per training (the selected set, each baseline): train loss (solid) and held-out loss (dashed) by epoch."""
    if epochs is None or not len(epochs):
        return _empty(title, "no finished epochs yet")
    fig = go.Figure()
    for i, (stage, g) in enumerate(epochs.groupby("stage", sort=False)):
        g = g.sort_values("epoch")
        label = "hopscotch" if stage == "train" else str(stage).removeprefix("train-")
        x = [int(e) + 1 for e in g["epoch"]]
        fig.add_trace(go.Scatter(x=x, y=list(g["train_loss"]), mode="lines+markers", name=f"{label} train",
                                 line={"color": _color(i)}, legendgroup=label))
        if g["eval_loss"].notna().any():
            fig.add_trace(go.Scatter(x=x, y=list(g["eval_loss"]), mode="lines+markers", name=f"{label} held-out",
                                     line={"color": _color(i), "dash": "dash"}, legendgroup=label))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="loss (mean NLL per token)", height=380,
                      **_LAYOUT)
    fig.update_xaxes(dtick=1)
    _log_if_spread(fig, "loss (mean NLL per token, log scale)")
    return fig


def scalars(scales, skipped: Iterable[int] = (), title: str = "Learned scalars per layer") -> go.Figure:
    """The four scalars of every layer (b_att, s_att, b_mlp, s_mlp) as four series; skipped blocks shaded."""
    values = np.asarray(scales.tolist() if hasattr(scales, "tolist") else scales, dtype=float)
    if values.ndim != 2 or values.shape[1] != 4:
        return _empty(title, "no scalars")
    layers = list(range(values.shape[0]))
    fig = go.Figure()
    for c, name in enumerate(SCALE_COLUMNS):
        fig.add_trace(go.Scatter(x=layers, y=list(values[:, c]), mode="lines+markers", name=name,
                                 line={"color": _color(c)},
                                 hovertemplate=f"layer %{{x}}<br>{name} = %{{y:.4f}}<extra></extra>"))
    for b in sorted({int(b) for b in skipped}):
        fig.add_vrect(x0=b - 0.4, x1=b + 0.4, fillcolor="#d62728", opacity=0.12, line_width=0)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#999")
    fig.update_layout(title=title + (" (shaded: skipped attention)" if skipped else ""), xaxis_title="layer",
                      yaxis_title="value (1 = original model)", height=380, **_LAYOUT)
    fig.update_xaxes(dtick=1 if len(layers) <= 32 else 2, range=[-0.5, len(layers) - 0.5])
    return fig


# ------------------------------------------------------------------------------------------------ compare
def layer_mmd(values: Sequence[float], skipped: Iterable[int] = (),
              title: str = "How far each layer's output moves (MMD², original vs modified)") -> go.Figure:
    """Per layer, MMD^2 between the original and modified model's hidden states (red bars: skipped blocks)."""
    if not len(values):
        return _empty(title, "nothing measured")
    skipped = {int(b) for b in skipped}
    layers = list(range(len(values)))
    fig = go.Figure(go.Bar(x=layers, y=[float(v) for v in values],
                           marker_color=["#d62728" if i in skipped else "#1f77b4" for i in layers],
                           hovertemplate="layer %{x}<br>MMD² %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="layer (red: attention skipped)", yaxis_title="MMD²", height=340,
                      **{k: v for k, v in _LAYOUT.items() if k != "legend"})
    fig.update_xaxes(dtick=1 if len(layers) <= 32 else 2)
    return fig


DRIFT_ORIGINAL = "rgba(125, 125, 125, 0.45)"
DRIFT_MODIFIED = "rgba(255, 127, 14, 0.75)"
DRIFT_AXIS_QUANTILE = 0.01  # panel axes span the 1st..99th percentile of both clouds (plus a margin)


def _robust_range(values: np.ndarray, q: float = DRIFT_AXIS_QUANTILE) -> list[float] | None:
    """[lo, hi] covering values between quantiles q and 1 - q, widened by 8% each side (None: nothing finite)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    lo, hi = (float(t) for t in np.quantile(v, [q, 1 - q]))
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.1
    return [lo - pad, hi + pad]


def drift_panels(result, skipped: Iterable[int] = (), max_panels: int = 12) -> list[int]:
    """Which layers get a scatter panel in `drift` when none are named: every measured layer when there are at
    most `max_panels`; else the skipped ones and then those with the largest drift, `max_panels` in all (the
    skipped ones first, largest drift first among them), in layer order."""
    layers = [int(i) for i in result.layers]
    if len(layers) <= max_panels:
        return layers
    sk = {int(b) for b in skipped}
    by = sorted(range(len(layers)), key=lambda j: (layers[j] not in sk, -float(result.drift[j]), layers[j]))
    return sorted(layers[j] for j in by[:max_panels])


def drift(result, skipped: Iterable[int] | None = None, layers: Iterable[int] | None = None, max_panels: int = 12,
          cols: int = 4, title: str | None = None) -> go.Figure:
    """The hidden-state drift view of a drift.Drift result: on top, per layer, MMD^2 between the original and
    modified states (bars; red: attention skipped; outlined: the layers shown below) and the drift (line, right
    axis); below, small multiples, one panel per layer: the original's states (grey) and the modified model's
    states of the same tokens (orange), both projected on the original's first two principal components.

    Each panel has its own axes, fitted to both clouds (hidden-state scale grows with depth, so one range for
    all layers would flatten the early ones); within a panel both clouds share the axes. The axes span the
    1st..99th percentile of both clouds' coordinates: a few far tokens (e.g. the massive-activation ones of
    SmolLM2's layers 2-8) would otherwise squash the rest into a line; they stay in the data, off the panel.
    `layers` picks the panels; by default `drift_panels` (all layers up to `max_panels`, else the skipped ones
    plus the largest drift). `skipped` defaults to result.skipped. Trace data are the projections themselves
    (meta = {"layer", "side"}), x = PC1 and y = PC2, customdata = token positions."""
    title = title or "Hidden-state drift: original (grey) vs modified (orange) on the original's top 2 PCs"
    if result is None or not len(result.layers):
        return _empty(title, "nothing measured")
    skipped = {int(b) for b in (result.skipped if skipped is None else skipped)}
    shown = drift_panels(result, skipped, max_panels) if layers is None else [int(i) for i in layers]
    all_layers = [int(i) for i in result.layers]
    unknown = [i for i in shown if i not in all_layers]
    if unknown:
        raise ValueError(f"layers {unknown} were not measured (measured: {list(result.layers)})")
    cols = max(1, min(cols, len(shown)))
    n_rows = -(-len(shown) // cols)
    specs = [[{"colspan": cols, "secondary_y": True}] + [None] * (cols - 1)]
    specs += [[{} if r * cols + c < len(shown) else None for c in range(cols)] for r in range(n_rows)]
    names = []
    for i in shown:
        j = all_layers.index(i)
        ev = result.explained[j]
        names.append(f"layer {i}{' ✂' if i in skipped else ''} · drift {float(result.drift[j]):.2f}"
                     f" · PCs {100 * (float(ev[0]) + float(ev[1])):.0f}%")
    top_h, panel_h = 260, 210
    fig = make_subplots(rows=n_rows + 1, cols=cols, specs=specs, subplot_titles=["MMD² and drift per layer",
                        *names], row_heights=[top_h] + [panel_h] * n_rows, vertical_spacing=min(0.12, 0.35 / (
                        n_rows + 1)), horizontal_spacing=0.06)
    fig.add_trace(go.Bar(
        x=all_layers, y=[float(v) for v in result.mmd], name="MMD²", showlegend=False,
        marker={"color": ["#d62728" if i in skipped else "#1f77b4" for i in all_layers],
                "line": {"color": ["black" if i in shown else "rgba(0,0,0,0)" for i in all_layers], "width": 1.5}},
        hovertemplate="layer %{x}<br>MMD² %{y:.4g}<extra></extra>"), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(
        x=all_layers, y=[float(v) for v in result.drift], mode="lines+markers", name="drift (right axis)",
        line={"color": "#ff7f0e", "width": 2}, hovertemplate="layer %{x}<br>drift %{y:.3f}<extra></extra>"),
        row=1, col=1, secondary_y=True)
    positions = np.asarray(result.positions)
    for p, i in enumerate(shown):
        j = all_layers.index(i)
        r, c = 2 + p // cols, 1 + p % cols
        both = np.concatenate([np.asarray(result.original[j]), np.asarray(result.modified[j])])  # (2n, 2)
        for side, pts, color in (("original", result.original[j], DRIFT_ORIGINAL),
                                 ("modified", result.modified[j], DRIFT_MODIFIED)):
            pts = np.asarray(pts)
            fig.add_trace(go.Scatter(
                x=pts[:, 0], y=pts[:, 1], mode="markers", name=side, legendgroup=side, showlegend=p == 0,
                marker={"color": color, "size": 5}, customdata=positions, meta={"layer": i, "side": side},
                hovertemplate=f"layer {i}, {side}<br>token %{{customdata}}<br>PC1 %{{x:.4g}}, PC2 %{{y:.4g}}"
                              "<extra></extra>"), row=r, col=c)
        fig.update_xaxes(showticklabels=False, range=_robust_range(both[:, 0]), row=r, col=c)
        fig.update_yaxes(showticklabels=False, range=_robust_range(both[:, 1]), row=r, col=c)
    fig.update_xaxes(title_text="layer (red: attention skipped; outlined: panels below)", row=1, col=1,
                     dtick=1 if len(all_layers) <= 32 else 2, range=[min(all_layers) - 0.6, max(all_layers) + 0.6])
    fig.update_yaxes(title_text="MMD²", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="drift", row=1, col=1, secondary_y=True, showgrid=False, tickformat=".2f",
                     range=[0, 1.1 * max([float(v) for v in result.drift if np.isfinite(float(v))] + [1e-9])])
    fig.update_annotations(font_size=11)
    n, total = len(positions), getattr(result, "total_tokens", len(positions))
    dropped = getattr(result, "dropped", 0)
    left_out = f" ({dropped} first token{'s' if dropped != 1 else ''} left out)" if dropped else ""
    fig.update_layout(title=f"{title}<br><sup>{n} sampled token positions of {total}{left_out}, the same on both "
                      "sides; panels: PC1 (x) vs PC2 (y), axes per panel</sup>", height=top_h + panel_h * n_rows + 200,
                      **{**_LAYOUT, "margin": {"l": 50, "r": 50, "t": 120, "b": 30},
                         "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 1, "xanchor": "right"}})
    return fig


# ------------------------------------------------------------------------------------------------ runs
def _bars_with_ci(y: list, cis: list, spec: str) -> tuple[dict | None, dict, str]:
    """(error_y of the bars or None, extra trace fields, hover text): the interval also in the hover text
    (customdata = [y - arrayminus, y + array])."""
    err = error_bars(y, cis)
    extra: dict = {}
    if err is not None:
        extra["customdata"] = [[v - m, v + p] if p is not None else [None, None]
                               for v, m, p in zip(y, err["arrayminus"], err["array"])]
    hover = f" [%{{customdata[0]:{spec}}}, %{{customdata[1]:{spec}}}]" if err is not None else ""
    return err, extra, hover


def error_bars(values, intervals) -> dict | None:
    """Plotly `error_y` for bars at `values` with 95% intervals [low, high] (None where a value has none): the
    bars reach from low to high; None when no value has an interval (a file from before the intervals)."""
    lows, highs, any_ci = [], [], False
    for y, ci in zip(values, intervals):
        ok = (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci)
              and isinstance(y, (int, float)) and np.isfinite(y))
        any_ci |= ok
        highs.append(float(ci[1]) - float(y) if ok else None)
        lows.append(float(y) - float(ci[0]) if ok else None)
    if not any_ci:
        return None
    return {"type": "data", "symmetric": False, "array": highs, "arrayminus": lows, "thickness": 1.2, "width": 3}


def fidelity(table: pd.DataFrame, title: str = "Fidelity to the original model (held-out)") -> go.Figure:
    """Side by side per run and variant: held-out NLL, KL(original || modified), top-1 agreement.

    `table` has columns run, variant, nll, kl, agreement (one row per run and variant) and, from eval.json,
    optionally nll_ci, kl_ci, agreement_ci ([low, high]): drawn as error bars (95% bootstrap over prompts)."""
    if table is None or not len(table):
        return _empty(title, "no evaluated runs")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("held-out NLL", "KL(original ‖ modified)",
                                                        "top-1 agreement"))
    variants = list(dict.fromkeys(table["variant"]))
    has_ci = False
    for i, variant in enumerate(variants):
        part = table[table["variant"] == variant]
        for col, metric in enumerate(("nll", "kl", "agreement"), start=1):
            y = list(part[metric])
            cis = list(part[f"{metric}_ci"]) if f"{metric}_ci" in part.columns else [None] * len(y)
            err, extra, ci_hover = _bars_with_ci(y, cis, ".4f")
            has_ci |= err is not None
            fig.add_trace(go.Bar(x=list(part["run"]), y=y, name=variant, legendgroup=variant,
                                 marker_color=_color(i), showlegend=col == 1, error_y=err, **extra,
                                 hovertemplate=f"%{{x}}<br>{variant}<br>{metric} %{{y:.4f}}{ci_hover}"
                                               "<extra></extra>"),
                          row=1, col=col)
    if has_ci:
        title = f"{title}<br><sup>error bars: 95% bootstrap intervals over the held-out prompts</sup>"
    fig.update_layout(title=title, barmode="group", height=440 if has_ci else 420, **_LAYOUT)
    # room above the panels' own titles for the title and its note (centred in the top margin)
    fig.update_layout(margin={"t": 110 if has_ci else 90})
    return fig


# ------------------------------------------------------------------------------------------------ benchmarks
def _method(variant: str) -> str:
    return variant.removesuffix("-unscaled")


def benchmarks(table: pd.DataFrame, title: str = "Benchmarks: accuracy and accuracy kept") -> go.Figure:
    """Multiple-choice benchmarks side by side (runview.benchmark_table: one row per benchmark and variant, the
    average over benchmarks as benchmark "average"). Top: acc_per_char per benchmark (x), one bar per variant,
    error bars from acc_per_char_ci; bottom: accuracy kept (variant ÷ original, acc_per_char on the same
    documents) of every variant but the original, error bars from kept_ci, a dashed line at 1 (the original).
    One colour per method (the original grey); a skip set's unscaled variant is the same colour, hatched."""
    if table is None or not len(table):
        return _empty(title, "no benchmarks scored")
    order = list(dict.fromkeys(table["benchmark"]))
    x_order = [b for b in order if b != "average"] + (["average"] if "average" in order else [])
    variants = list(dict.fromkeys(table["variant"]))
    methods = [m for m in dict.fromkeys(_method(v) for v in variants) if m != "original"]
    colors = {"original": "#7f7f7f", **{m: _color(i) for i, m in enumerate(methods)}}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.55, 0.45],
                        subplot_titles=("accuracy (acc_per_char)", "accuracy kept (variant ÷ original)"))
    has_ci = False
    for variant in variants:
        part = table[table["variant"] == variant].set_index("benchmark")
        xs = [b for b in x_order if b in part.index]
        style = {"marker_color": colors[_method(variant)], "legendgroup": variant,
                 "marker_pattern_shape": "/" if variant.endswith("-unscaled") else ""}
        for row, metric in ((1, "acc_per_char"), (2, "kept")):
            if row == 2 and variant == "original":
                continue
            y = [part.at[b, metric] for b in xs]
            y = [float(v) if isinstance(v, (int, float)) and v == v else None for v in y]
            cis = [part.at[b, f"{metric}_ci"] for b in xs]
            err, extra, ci_hover = _bars_with_ci(y, cis, ".3f")
            has_ci |= err is not None
            label = "acc_per_char" if metric == "acc_per_char" else "kept"
            fig.add_trace(go.Bar(x=xs, y=y, name=variant, showlegend=row == 1, error_y=err, **style, **extra,
                                 hovertemplate=f"%{{x}}<br>{variant}<br>{label} %{{y:.3f}}{ci_hover}"
                                               "<extra></extra>"), row=row, col=1)
    fig.add_hline(y=1.0, line_dash="dash", line_color="#555", row=2, col=1)
    if has_ci:
        title = f"{title}<br><sup>error bars: 95% bootstrap intervals over documents (kept: paired)</sup>"
    fig.update_yaxes(title_text="acc_per_char", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="kept", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="benchmark", row=2, col=1)
    fig.update_layout(title=title, barmode="group", height=560, **_LAYOUT)
    fig.update_layout(margin={"t": 110 if has_ci else 90})
    return fig
