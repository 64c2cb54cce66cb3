"""A run report: one self-contained HTML file with every figure and table of a run, interactive (plotly.js inlined
once; tables sort on a header click; each figure's numbers as a CSV link). Opens offline in any browser.

    html = build_report("runs/my-run")                 # str
    write_report("runs/my-run", "report.html")         # the file; default path: runs/my-run/report.html
    report_figures("runs/my-run")                      # {key: go.Figure}: what the report draws
    hopscotch report --run NAME [--runs-dir DIR] [--out FILE]

Sections: results (key numbers, time per stage), selection (elbow, candidate map, fast mode's shortlist map, the
rounds), scale training (loss curves, the learned scalars of every trained set), fidelity (eval.json's table and
per-layer MMD of every variant, else the run's own evaluation), benchmarks (benchmarks.json: accuracy and accuracy
kept per benchmark and variant), speed (bench.json), settings and log. The figures
are the app's (hopscotch_core.studio.figures) from the same RunView readers. A section whose files are not there yet (a
run still going, stopped, or never evaluated) says so in one line.
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from . import figures
from .figexport import figure_csv, file_stem
from ..fileio import atomic_write
from .commands import command_line
from ..method.runs import MANIFEST, RunError
from ..method.settings import baselines_words
from .runview import RunView, benchmark_table, diff_table, intervals_as_text


@dataclass
class _Figure:
    key: str
    fig: go.Figure
    caption: str = ""


@dataclass
class _Table:
    df: pd.DataFrame
    caption: str = ""


@dataclass
class _Section:
    title: str
    items: list = field(default_factory=list)  # _Figure | _Table | str (a note) | ("pre", text)


def _open(run_dir: str | os.PathLike) -> RunView:
    run = RunView(run_dir)
    if not run.exists():
        raise RunError(f"{run_dir} is not a run directory (no {MANIFEST})")
    return run


def _blocks(v: Any) -> Any:
    return " ".join(str(b) for b in v) if isinstance(v, (list, tuple)) else v


def _interval(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(c, (int, float)) for c in v):
        return f"[{v[0]:.4f}, {v[1]:.4f}]"
    return "–" if v is None else v


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """Lists as text: blocks `7 6 25`, intervals (columns *_ci) `[low, high]`."""
    if not len(df):
        return df
    return df.apply(lambda col: col.map(_interval if str(col.name).endswith("_ci") else _blocks))


def _sections(run: RunView) -> list[_Section]:
    m = run.manifest
    s = m.get("settings") or {}
    res = m.get("results") or {}
    out: list[_Section] = []

    # ------------------------------------------------------------------------------------------ results
    sec = _Section("Results")
    keys = [("selected blocks", _blocks(run.selected) or "–")]
    keys += [(k.replace("_", " "), v) for k, v in res.items() if isinstance(v, (int, float, str))]
    sec.items.append(_Table(pd.DataFrame(keys, columns=["quantity", "value"]),
                            "Held-out losses: mean NLL per token of the original model's own answers to the held-out "
                            "prompts; KL(original ‖ modified) and top-1 agreement against the original."))
    if m.get("timings"):
        sec.items.append(_Table(pd.DataFrame(list(m["timings"].items()), columns=["stage", "seconds"]),
                                "Time per stage."))
    out.append(sec)

    # ------------------------------------------------------------------------------------------ selection
    sec = _Section("Selection")
    rounds, scores, overlay = run.rounds(), run.scores(), run.overlay()
    if len(rounds) or len(overlay):
        sec.items.append(_Figure("elbow", figures.elbow(rounds, overlay, **run.objective()),
                                 "The loss after each removal (line; calibration data, scalars trained one epoch) and "
                                 "the held-out loss at k of the selected set and each baseline (markers)."))
    layers = run.num_layers or (int(scores["candidate"].max()) + 1 if len(scores) else 0)
    if len(scores) and (scores["kind"] == "paper").any():
        sec.items.append(_Figure("candidates", figures.candidate_heatmap(scores, layers, rounds, "paper", "loss"),
                                 "Every scored candidate's loss in every round (green: cheap to remove); ★ the block "
                                 "removed."))
    if len(scores) and (scores["kind"] == "shortlist").any():
        label = "block influence" if s.get("shortlist_by", "bi") == "bi" else "untrained loss"
        sec.items.append(_Figure("shortlist", figures.candidate_heatmap(scores, layers, rounds, "shortlist", label),
                                 f"Fast mode's cheap ranking of every block ({label}) before the shortlist is "
                                 "trained."))
    if len(rounds):
        sec.items.append(_Table(rounds.rename(columns={"n_removed": "blocks removed"}), "One row per selection "
                                "round: the block removed and its loss."))
    if not sec.items:
        given = s.get("blocks") is not None
        sec.items.append("Not available: " + ("this run trained a given skip set "
                         f"({_blocks(s['blocks'])}); there was no selection." if given
                         else "no selection round has finished yet (scores.jsonl)."))
    out.append(sec)

    # ------------------------------------------------------------------------------------------ training
    sec = _Section("Scale training")
    epochs = run.epochs()
    if len(epochs):
        sec.items.append(_Figure("loss", figures.loss_curves(epochs), "Train (solid) and held-out (dashed) loss per "
                                 "epoch, for the selected set (hopscotch) and each trained baseline."))
    for folder in run.scale_sets():
        scales = run.scales(folder)
        if scales is None:
            continue
        name = "hopscotch" if folder == "scales" else folder.removeprefix("scales-")
        ep = run.scale_epochs(folder)[-1] + 1
        sec.items.append(_Figure(f"scalars-{name}", figures.scalars(
            scales, run.scale_blocks(folder), title=f"Learned scalars: {name}, epoch {ep}"),
            "b scales a block's output, s its residual path; 1 everywhere is the original model."))
    if not sec.items:
        sec.items.append("Not available: no training epoch has finished yet (metrics.jsonl, scales/).")
    out.append(sec)

    # ------------------------------------------------------------------------------------------ fidelity
    sec = _Section("Fidelity to the original model")
    fid = run.fidelity()
    if len(fid):
        source = "eval.json (`hopscotch eval`)" if run.eval_rows() else "the run's own evaluation"
        has_ci = any(c.endswith("_ci") for c in fid.columns)
        sec.items.append(_Table(_cells(fid),
                                f"Held-out, one row per variant, from {source}."
                                + (" `_ci`: 95% bootstrap interval over the held-out prompts [low, high]."
                                   if has_ci else "")))
        bars = fid[fid["variant"] != "original"].assign(run=run.name)
        if len(bars) and {"nll", "kl", "agreement"} <= set(bars.columns):
            cols = ["run", "variant", "nll", "kl", "agreement"]
            cols += [c for c in ("nll_ci", "kl_ci", "agreement_ci") if c in bars.columns]
            sec.items.append(_Figure("fidelity", figures.fidelity(bars[cols]),
                                     "Held-out NLL, KL(original ‖ modified) and top-1 agreement per variant"
                                     + ("; error bars: 95% intervals over the prompts." if has_ci else ".")))
        trained_alike = baselines_words(s)
        if trained_alike:
            sec.items.append(trained_alike)
        diffs = run.eval_diffs()
        if diffs:
            sec.items.append(_Table(diff_table(diffs), "Paired differences a − b over the same held-out prompts, "
                                    "95% interval; ✱ where it excludes 0."))
        mmd = run.eval_layer_mmd()
        blocks = {r.get("variant"): r.get("attention") or [] for r in run.eval_rows() or []}
        for variant, values in mmd.items():
            sec.items.append(_Figure(f"mmd-{variant}", figures.layer_mmd(
                values, blocks.get(variant, []), title=f"Per-layer MMD², original vs {variant}"),
                "How far each layer's output hidden states move from the original model's (red: skipped blocks)."))
        if not mmd:
            sec.items.append("Per-layer MMD: not available (run `hopscotch eval --run NAME` to write eval.json).")
    else:
        sec.items.append("Not available: the run has not been evaluated yet (its final evaluation, or "
                         "`hopscotch eval --run NAME`).")
    out.append(sec)

    # ------------------------------------------------------------------------------------------ benchmarks
    sec = _Section("Benchmarks")
    bm = run.benchmarks()
    table = benchmark_table(bm)
    if len(table):
        avg = (bm.get("average") or {}).get("benchmarks") or []
        sec.items.append(_Figure("benchmarks", figures.benchmarks(table),
                                 "Accuracy per benchmark (acc_per_char) and accuracy kept (variant ÷ original on "
                                 "the same documents) of every variant; error bars: 95% bootstrap intervals."))
        sec.items.append(_Table(intervals_as_text(table, 4),
                                f"`hopscotch eval --benchmarks` on {bm.get('source', '?')}: multiple-choice benchmarks "
                                "scored by log-likelihood (OLMES ranked-classification form); acc: the most likely "
                                "choice is the gold one, acc_per_char: the same per character of the choice (OLMES' "
                                "primary metric); kept: acc_per_char of the variant ÷ the original's on the same "
                                "documents; `_ci`: 95% bootstrap interval over the documents (kept: paired)."
                                + (f" average: over {', '.join(avg)}." if avg else "")))
    else:
        sec.items.append("Not available: no benchmarks.json (`hopscotch eval --run NAME --benchmarks olmes --limit "
                         "200` writes it).")
    out.append(sec)

    # ------------------------------------------------------------------------------------------ speed
    sec = _Section("Speed and memory")
    bench = run.bench()
    if bench:
        sec.items.append(_Table(_cells(pd.DataFrame(bench["rows"])),
                                f"`hopscotch bench` on {bench.get('device')} ({bench.get('dtype')}, "
                                f"{bench.get('threads', '?')} threads): medians with min–max, speed-up against the "
                                "original, the FLOP-model bound, KV-cache and weight bytes."))
    else:
        sec.items.append("Not available: no bench.json (`hopscotch bench --run NAME` writes it).")
    out.append(sec)

    # ------------------------------------------------------------------------------------------ settings
    sec = _Section("Settings")
    sec.items.append(_Table(pd.DataFrame([(k, _blocks(v)) for k, v in s.items()], columns=["setting", "value"]),
                            "The run's settings (RunSettings)."))
    model = {k: v for k, v in (m.get("model") or {}).items() if k != "fingerprint"}
    extra = [("model " + k, v) for k, v in model.items()] + [(k, v) for k, v in (m.get("versions") or {}).items()]
    extra += [(k, m.get(k)) for k in ("created", "updated", "state", "stage") if m.get(k) is not None]
    if extra:
        sec.items.append(_Table(pd.DataFrame(extra, columns=["what", "value"]), "Model identity, versions, dates."))
    log = run.log(60)
    if log:
        sec.items.append(("pre", log))
    out.append(sec)
    return out


def report_figures(run_dir: str | os.PathLike) -> dict[str, go.Figure]:
    """Every figure the report of `run_dir` draws, by key (elbow, candidates, shortlist, loss, scalars-FOLDER,
    fidelity, mmd-VARIANT, benchmarks), in report order."""
    return {it.key: it.fig for sec in _sections(_open(run_dir)) for it in sec.items if isinstance(it, _Figure)}


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:24px;
color:#222;line-height:1.45}
h1{margin-bottom:4px}h2{border-bottom:2px solid #eee;padding-bottom:4px;margin-top:36px}
.meta{color:#555}.note{color:#777;font-style:italic}.caption{color:#666;font-size:0.9em;margin:2px 0 8px}
code,pre{background:#f6f6f6;border-radius:4px}code{padding:1px 4px}pre{padding:10px;overflow-x:auto;font-size:0.85em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:18px}
figure{margin:0;border:1px solid #eee;border-radius:6px;padding:6px}figcaption{color:#666;font-size:0.9em}
figcaption a{margin-left:6px}
div.scroll{overflow-x:auto;max-width:100%}
table.hs{border-collapse:collapse;margin:8px 0;font-size:0.9em;white-space:nowrap}
table.hs th,table.hs td{border-bottom:1px solid #e4e4e4;padding:3px 10px;text-align:right}
table.hs th{cursor:pointer;background:#fafafa;user-select:none}table.hs th:after{content:" ⇅";color:#bbb}
table.hs td:first-child,table.hs th:first-child{text-align:left}
"""

_SORT_JS = """
window.addEventListener("load",function(){  // figures drawn while the page was still laying out: fit them again
  document.querySelectorAll(".plotly-graph-div").forEach(function(d){Plotly.Plots.resize(d);});
});
document.querySelectorAll("table.hs").forEach(function(t){
  t.querySelectorAll("thead th").forEach(function(th,i){
    th.addEventListener("click",function(){
      var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows), asc=th.dataset.asc!=="1";
      t.querySelectorAll("thead th").forEach(function(o){delete o.dataset.asc;});
      th.dataset.asc=asc?"1":"0";
      function key(r){var x=r.cells[i].textContent.trim(); return x===""||isNaN(Number(x))?x:Number(x);}
      rows.sort(function(a,b){
        var x=key(a), y=key(b);
        var c=(typeof x==="number"&&typeof y==="number")?x-y:String(x).localeCompare(String(y));
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v != v:  # NaN: no value
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return "" if v is None else str(v)


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f'<div class="scroll"><table class="hs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure_html(item: _Figure, stem: str) -> str:
    div = pio.to_html(item.fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{file_stem(item.key)}",
                      config={"displaylogo": False, "responsive": True,
                              "toImageButtonOptions": {"filename": f"{stem}-{file_stem(item.key)}"}},
                      default_width="100%")
    csv = base64.b64encode(figure_csv(item.fig).encode()).decode()
    link = (f'<a download="{stem}-{file_stem(item.key)}.csv" href="data:text/csv;charset=utf-8;base64,{csv}">'
            "data (CSV)</a>")
    return (f'<figure class="hs-figure" data-key="{html.escape(item.key)}">{div}'
            f"<figcaption>{html.escape(item.caption)}{link}</figcaption></figure>")


def build_report(run_dir: str | os.PathLike) -> str:
    """The report of the run in `run_dir` as one HTML document (str). Raises RunError when it is not a run."""
    from plotly.offline import get_plotlyjs

    from .. import __version__

    run = _open(run_dir)
    m = run.manifest
    name = m.get("name") or run.name
    stem = file_stem(name)
    s = m.get("settings") or {}
    model = (m.get("model") or {}).get("source") or s.get("model") or "?"
    mode = "given skip set" if s.get("blocks") is not None else f"{s.get('mode', '?')} mode, k = {s.get('k', '?')}"
    parts = [f"<h1>Hopscotch run: {html.escape(name)}</h1>",
             f'<p class="meta">model <b>{html.escape(str(model))}</b> · {html.escape(mode)} · state '
             f'<b>{html.escape(str(m.get("state", "?")))}</b> · selected attention blocks '
             f"<b>{html.escape(_blocks(run.selected) or '–')}</b> · created "
             f"{html.escape(str(m.get('created', '?')))}"
             "</p>",
             f"<p>Made by <code>{html.escape(command_line(m))}</code></p>"]
    for sec in _sections(run):
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        figs = [it for it in sec.items if isinstance(it, _Figure)]
        if figs:
            parts.append('<div class="grid">' + "".join(_figure_html(f, stem) for f in figs) + "</div>")
        for it in sec.items:
            if isinstance(it, _Table):
                parts.append(_table_html(it.df) + (f'<p class="caption">{html.escape(it.caption)}</p>'
                                                    if it.caption else ""))
            elif isinstance(it, tuple) and it[0] == "pre":
                parts.append(f"<details><summary>Log (last lines)</summary><pre>{html.escape(it[1])}</pre></details>")
            elif isinstance(it, str):
                parts.append(f'<p class="note">{html.escape(it)}</p>')
    parts.append(f'<p class="meta">Written by hopscotch-studio {__version__} on {time.strftime("%Y-%m-%d %H:%M")} '
                 f"from {html.escape(str(run.dir))}.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Hopscotch run {html.escape(name)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            + "\n".join(parts) + f"<script>{_SORT_JS}</script></body></html>\n")


def write_report(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Write the report of `run_dir` to `out_path` (default: RUN/report.html), atomically; returns the path."""
    text = build_report(run_dir)
    out = Path(out_path) if out_path is not None else Path(run_dir) / "report.html"
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, text)
