"""Read a run directory (runs.py) into the tables the app plots: plain data, no UI, nothing written.

    v = RunView("runs/my-run")
    v.manifest, v.rounds(), v.scores(), v.overlay(), v.epochs(), v.scales("scales", epoch=2), v.fidelity()
    benchmark_table(v.benchmarks())                    # one row per benchmark x variant, then the averages
    list_runs("runs", examples=["assets/example-run"])    # one dict per run, examples first

Every reader accepts a run that is still being written (a live job) or that lacks optional files (eval.json,
bench.json / benchmarks.json from the measurement commands; baselines): it returns an empty table or None, never
raises for a missing file. A run's files are described in runs.py; eval.json / bench.json / benchmarks.json are
read when their format_version is 1.
"""

from __future__ import annotations

import copy

import io
import os
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import jobs
from ..constants import COLUMNS
from ..method import runs
from ..method.runs import MANIFEST, RunError, read_json, read_jsonl

if TYPE_CHECKING:  # torch loads only when a run's tensors are read (the app's first page draws without it)
    import torch

SCALE_COLUMNS = COLUMNS  # the old name, which the app's tables use


def _rows(obj: Any) -> list[dict] | None:
    if isinstance(obj, dict) and obj.get("format_version") == 1 and isinstance(obj.get("rows"), list):
        return [r for r in obj["rows"] if isinstance(r, dict)]
    return None


def _interval(ci: Any) -> list[float] | None:
    """[low, high] when `ci` is one (two numbers), else None (a file from before the intervals, or no figure)."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        return [float(ci[0]), float(ci[1])]
    return None


DIFF_METRICS = ("nll", "kl", "agreement", "answer_agreement")
DIFF_LABELS = {"nll": "NLL", "kl": "KL", "agreement": "top-1", "answer_agreement": "answer agr.",
               "exact_match": "exact match", "gsm8k_strict": "GSM8K strict", "gsm8k_flexible": "GSM8K flex"}


def diff_table(diffs: list[dict], metrics: tuple[str, ...] = DIFF_METRICS, label_a: str = "",
               label_b: str = "") -> pd.DataFrame:
    """Paired differences as one row per pair (a, b): per metric `a - b [low, high]` with `✱` where the 95%
    interval excludes 0, and `excludes 0`: the metrics whose interval does. `label_a`/`label_b` prefix the
    variant names (run names, across runs)."""
    rows: dict[tuple, dict] = {}
    for d in diffs:
        if d.get("metric") not in metrics:
            continue
        key = (label_a + str(d["a"]), label_b + str(d["b"]))
        row = rows.setdefault(key, {"a": key[0], "b": key[1], **{DIFF_LABELS[m]: "" for m in metrics},
                                    "excludes 0": []})
        lo, hi = d["ci"]
        mark = bool(d.get("excludes_zero"))
        row[DIFF_LABELS[d["metric"]]] = f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" ✱" if mark else "")
        if mark:
            row["excludes 0"].append(DIFF_LABELS[d["metric"]])
    out = [{**r, "excludes 0": ", ".join(r["excludes 0"]) or "—"} for r in rows.values()]
    return pd.DataFrame(out, columns=["a", "b", *(DIFF_LABELS[m] for m in metrics), "excludes 0"])


def fidelity_diffs(views: list[RunView], metrics: tuple[str, ...] = DIFF_METRICS) -> pd.DataFrame:
    """The Runs comparison's differences: each run's own `diffs` (trained vs unscaled, hopscotch vs baselines;
    not the ones against the original), and, for two runs evaluated on the same held-out prompts and answers,
    each variant the two share (measure.evaluation.compare_variants). Variants are named `run · variant`."""
    from ..measure.evaluation import EvalError, compare_variants

    parts = []
    for v in views:
        own = [d for d in v.eval_diffs() if d.get("b") != "original"]
        if own:
            parts.append(diff_table(own, metrics, f"{v.name} · ", f"{v.name} · "))
    for i, a in enumerate(views):
        for b in views[i + 1:]:
            ra, rb = a.eval_rows() or [], b.eval_rows() or []
            shared = [r["variant"] for r in ra if r.get("variant") != "original"
                      and any(x.get("variant") == r.get("variant") for x in rb)]
            for variant in shared:
                try:
                    got = compare_variants(a.dir, variant, variant, other=b.dir, figures=metrics)
                except EvalError:
                    break  # not on the same prompts / answers, or files without per-prompt values: no pairing
                parts.append(diff_table(got, metrics, f"{a.name} · ", f"{b.name} · "))
    if not parts:
        return diff_table([], metrics)
    return pd.concat(parts, ignore_index=True)


BENCHMARK_COLUMNS = ("benchmark", "variant", "docs", "acc", "acc_ci", "acc_per_char", "acc_per_char_ci", "kept",
                     "kept_ci")
AVERAGE = "average"  # the benchmark label of the rows that average over benchmarks


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def benchmark_table(result: dict | None) -> pd.DataFrame:
    """benchmarks.json (measure.benchmarks) as a tidy table: one row per benchmark and variant (benchmark, variant,
    docs, acc, acc_ci, acc_per_char, acc_per_char_ci, kept, kept_ci; intervals [low, high] or None), in the file's
    order, then one row per variant of the average over benchmarks (benchmark "average": docs summed over the
    averaged benchmarks, acc_per_char their macro mean, kept with its stratified interval; no acc there).
    `kept` = acc_per_char of the variant / the original's on the same documents. Empty (with the columns) for
    None or a file without benchmarks."""
    rows: list[dict] = []
    entries = (result or {}).get("benchmarks") or {}
    for name, e in entries.items():
        if not isinstance(e, dict):
            continue
        for variant, f in (e.get("variants") or {}).items():
            rows.append({"benchmark": name, "variant": variant, "docs": e.get("docs"),
                         "acc": _number(f.get("acc")), "acc_ci": _interval(f.get("acc_ci")),
                         "acc_per_char": _number(f.get("acc_per_char")),
                         "acc_per_char_ci": _interval(f.get("acc_per_char_ci")),
                         "kept": _number(f.get("kept")), "kept_ci": _interval(f.get("kept_ci"))})
    avg = (result or {}).get("average") or {}
    docs = sum(int(entries[n].get("docs") or 0) for n in avg.get("benchmarks") or [] if n in entries)
    for variant, f in (avg.get("variants") or {}).items():
        rows.append({"benchmark": AVERAGE, "variant": variant, "docs": docs or None, "acc": None, "acc_ci": None,
                     "acc_per_char": _number(f.get("acc_per_char")), "acc_per_char_ci": None,
                     "kept": _number(f.get("kept")), "kept_ci": _interval(f.get("kept_ci"))})
    return pd.DataFrame(rows, columns=list(BENCHMARK_COLUMNS))


def intervals_as_text(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A copy of `table` for display: numbers rounded to `digits`, intervals (columns *_ci) as `[low, high]`,
    missing ones as "–"."""
    def interval(v: Any) -> str:
        ci = _interval(v)
        return "–" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"

    out = table.copy()
    for col in out.columns:
        if str(col).endswith("_ci"):
            out[col] = out[col].map(interval)
        elif pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(digits)
    return out


def benchmarks_job(run: RunView) -> str:
    """The name of a run's benchmark job (`hopscotch eval --benchmarks ...`; one at a time per run)."""
    return f"{run.name}.benchmarks"


def benchmarks_status(run: RunView) -> dict:
    """jobs.status of the run's benchmark job, with step, total and fraction from the run's progress.json while it
    runs (the eval writes it there, not under the job's name; an older file of another stage is not read)."""
    out = jobs.status(run.dir.parent, benchmarks_job(run))
    if not out["alive"]:
        return out
    prog = run._json(runs.PROGRESS_FILE)
    rec = jobs.record(run.dir.parent, benchmarks_job(run)) or {}
    try:
        started = time.mktime(time.strptime(str(rec.get("started")), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        started = None
    if (isinstance(prog, dict) and str(prog.get("stage", "")).startswith("eval")
            and (started is None or float(prog.get("time") or 0) >= started - 1)):
        step, total = prog.get("step"), prog.get("total")
        out = {**out, "step": step, "total": total, "info": prog.get("info") or {}, "stage": prog.get("stage")}
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
            out["fraction"] = max(0.0, min(1.0, step / total))
            spent = float(prog.get("time") or 0) - started if started is not None else 0.0
            if step > 0 and spent > 0:  # at this job's pace so far (model loading included)
                out["remaining_s"] = spent * max(total - step, 0) / step
    return out


class RunView:
    """Read-only access to one run directory (it may be live, partial, or a bundled example)."""

    def __init__(self, path: str | os.PathLike, example: bool = False):
        self.dir = Path(path)
        self.example = example

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def manifest(self) -> dict:
        """The run's manifest.json, parsed again only when the file changed (its inode, size and modification
        time: a running job replaces it atomically); a copy, so a caller's edits never reach the cache."""
        path = self.dir / MANIFEST
        try:
            st = path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return {}
        cached = getattr(self, "_manifest", None)
        if cached is None or cached[0] != key:
            try:
                cached = (key, read_json(path, {}) or {})
            except RunError:
                return {}
            self._manifest = cached
        return copy.deepcopy(cached[1])

    def exists(self) -> bool:
        return (self.dir / MANIFEST).is_file()

    def _jsonl(self, name: str) -> list[dict]:
        try:
            return read_jsonl(self.dir / name)
        except RunError:
            return []

    def _json(self, name: str, default: Any = None) -> Any:
        try:
            return read_json(self.dir / name, default)
        except RunError:
            return default

    @property
    def num_layers(self) -> int | None:
        return (self.manifest.get("model") or {}).get("num_layers")

    @property
    def selected(self) -> list[int]:
        return list(self.manifest.get("selected") or [])

    # -------------------------------------------------------------------------------------- selection
    def scores(self) -> pd.DataFrame:
        """Every candidate score: round, candidate, kind (paper | shortlist), loss, removed."""
        rows = self._jsonl(runs.SCORES_FILE)
        cols = ["round", "candidate", "kind", "loss", "removed"]
        return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)

    def rounds(self) -> pd.DataFrame:
        """Per finished selection round: removed block and its loss (the best paper-style score of the round).

        From the manifest once selection is over; while it runs, from scores.jsonl (a round counts once the
        next round has started, or when it has all its scores)."""
        cols = ["round", "removed", "loss", "n_removed"]
        sel = self.manifest.get("selection") or {}
        rounds = sel.get("rounds")
        if rounds:
            df = pd.DataFrame(rounds)
        else:
            sc = self.scores()
            sc = sc[sc["kind"] == "paper"] if len(sc) else sc
            if not len(sc):
                return pd.DataFrame(columns=cols)
            out = []
            for rnd, g in sc.groupby("round"):
                nxt = sc[sc["round"] == rnd + 1]
                if len(nxt):
                    removed = [b for b in nxt.iloc[0]["removed"] if b not in g.iloc[0]["removed"]]
                    best = g[g["candidate"].isin(removed)] if removed else g.nsmallest(1, "loss")
                    best = best if len(best) else g.nsmallest(1, "loss")
                    out.append({"round": int(rnd), "removed": int(best.iloc[0]["candidate"]),
                                "loss": float(best.iloc[0]["loss"])})
            df = pd.DataFrame(out, columns=["round", "removed", "loss"])
        if not len(df):
            return pd.DataFrame(columns=cols)
        df = df.sort_values("round").reset_index(drop=True)
        df["n_removed"] = df["round"] + 1
        return df[cols]

    def baselines(self) -> dict:
        return self._json(runs.BASELINES_FILE, {}) or {}

    def objective(self) -> dict:
        """{"objective", "kl_weight"} the run's selection and training minimised (ce for runs made before the
        setting existed); figures.elbow takes them as they are."""
        from ..method.settings import RunSettings

        s = RunSettings.from_manifest({k: v for k, v in (self.manifest.get("settings") or {}).items()
                                       if k in ("objective", "kl_weight")})
        return {"objective": s.objective, "kl_weight": float(s.kl_weight)}

    def overlay(self) -> pd.DataFrame:
        """Held-out values of the run's objective (objective()) at k blocks removed: label, method, scaled, k,
        loss, blocks; plus the original model (k = 0) where the objective has a value for it (ce: its NLL, ce+kl:
        its NLL; kl: none, KL of the original to itself is 0). ce+kl: nll + kl_weight * kl. From eval.json when
        present, else the manifest's results and baselines.json."""
        cols = ["label", "method", "scaled", "k", "loss", "blocks"]
        name, weight = self.objective().values()

        def value(nll, kl, original=False):
            if name == "ce" or (original and name == "ce+kl"):
                return float(nll) if isinstance(nll, (int, float)) else None
            if original or not isinstance(kl, (int, float)):
                return None
            if name == "kl":
                return float(kl)
            return float(nll) + weight * float(kl) if isinstance(nll, (int, float)) else None

        out: list[dict] = []

        def add(label, method, scaled, k, loss, blocks):
            if loss is not None:
                out.append({"label": label, "method": method, "scaled": scaled, "k": k, "loss": loss,
                            "blocks": blocks})

        ev = self.eval_rows()
        if ev:
            for r in ev:
                k = int(r.get("k") or len(r.get("attention") or []))
                method = r.get("method") or r.get("variant", "?")
                add(r.get("variant", "?"), method, bool(r.get("scaled")), k,
                    value(r.get("nll"), r.get("kl"), method == "original"), list(r.get("attention") or []))
            return pd.DataFrame(out, columns=cols)
        res = self.manifest.get("results") or {}
        sel = self.selected
        add("original", "original", False, 0, value(res.get("eval_loss_original"), None, True), [])
        for tag, scaled in (("unscaled", False), ("trained", True)):
            add("hopscotch" + ("" if scaled else "-unscaled"), "hopscotch", scaled, len(sel),
                value(res.get(f"eval_loss_{tag}"), res.get(f"eval_kl_{tag}")), sel)
        for bname, b in self.baselines().items():
            for tag, scaled in (("unscaled", False), ("trained", True)):
                add(bname + ("" if scaled else "-unscaled"), bname, scaled, len(b.get("attention") or []),
                    value(b.get(f"eval_loss_{tag}"), b.get(f"eval_kl_{tag}")), list(b.get("attention") or []))
        return pd.DataFrame(out, columns=cols)

    # -------------------------------------------------------------------------------------- training
    def epochs(self) -> pd.DataFrame:
        """Per training epoch: stage (train, train-<baseline>), epoch, train_loss, eval_loss."""
        cols = ["stage", "epoch", "train_loss", "eval_loss"]
        rows = [r for r in self._jsonl(runs.METRICS_FILE) if str(r.get("stage", "")).startswith("train")]
        return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)

    def scale_sets(self) -> list[str]:
        """Folders of per-epoch scalars: "scales" (the selected set), "scales-<baseline>"."""
        return sorted(p.name for p in self.dir.glob("scales*") if p.is_dir() and any(p.glob("epoch_*.safetensors")))

    def scale_epochs(self, folder: str = runs.SCALES_DIR) -> list[int]:
        return runs.epoch_numbers(self.dir / folder)

    def scales(self, folder: str = runs.SCALES_DIR, epoch: int | None = None) -> torch.Tensor | None:
        """[num_layers, 4] scalars after `epoch` (default: the last) of `folder`; or the adapter's when
        folder == "adapter". None when absent."""
        if folder == runs.ADAPTER_DIR:
            ad = self.adapter()
            return None if ad is None else ad[0]
        epochs = self.scale_epochs(folder)
        if not epochs:
            return None
        saved = runs.read_epoch(self.dir / folder, epochs[-1] if epoch is None else epoch)
        return None if saved is None else saved["scales"].float()

    def scale_blocks(self, folder: str = runs.SCALES_DIR) -> list[int]:
        """The attention blocks skipped while `folder`'s scalars were trained."""
        if folder in (runs.SCALES_DIR, runs.ADAPTER_DIR):
            return self.selected
        return list((self.baselines().get(folder[len("scales-"):]) or {}).get("attention") or [])

    def channel_scales(self) -> torch.Tensor | None:
        """The final adapter's per-channel multipliers (granularity channel), or None."""
        from ..engine.artifacts import read_channel_scales

        got = self.adapter()
        try:
            return None if got is None else read_channel_scales(self.dir / runs.ADAPTER_DIR, got[1])
        except (ValueError, OSError):
            return None

    def lora(self) -> dict[str, torch.Tensor]:
        """The final adapter's low-rank deltas ({} without them)."""
        from ..engine.artifacts import read_lora

        got = self.adapter()
        try:
            return {} if got is None else read_lora(self.dir / runs.ADAPTER_DIR, got[1])
        except (ValueError, OSError):
            return {}

    def adapter(self) -> tuple[torch.Tensor, dict] | None:
        """(scales, meta) of the run's final adapter, or None before training finished."""
        from ..engine.artifacts import read_artifact

        if not (self.dir / runs.ADAPTER_DIR).is_dir():
            return None
        try:
            return read_artifact(self.dir / runs.ADAPTER_DIR, kind="adapter")
        except (ValueError, OSError):
            return None

    def adapter_zip(self) -> bytes | None:
        """The adapter directory as a zip (for a download button)."""
        folder = self.dir / runs.ADAPTER_DIR
        if not folder.is_dir():
            return None
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    z.write(f, f"{self.name}-adapter/{f.name}")
        return buf.getvalue()

    # -------------------------------------------------------------------------------------- measurements
    def eval_rows(self) -> list[dict] | None:
        return _rows(self._json(runs.EVAL_FILE))

    def eval_layer_mmd(self) -> dict[str, list[float]]:
        """Per variant, eval.json's per-layer MMD^2 (hopscotch eval), or {} when absent."""
        obj = self._json(runs.EVAL_FILE) or {}
        mmd = obj.get("layer_mmd") if _rows(obj) is not None else None
        if not isinstance(mmd, dict):
            return {}
        return {k: [float(x) for x in v] for k, v in mmd.items()
                if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)}

    def eval_diffs(self) -> list[dict]:
        """eval.json's paired differences between variants (`diffs`: a, b, metric, diff, ci, excludes_zero), or []
        for a file written before they were kept."""
        obj = self._json(runs.EVAL_FILE) or {}
        diffs = obj.get("diffs") if _rows(obj) is not None else None
        return [d for d in diffs or [] if isinstance(d, dict) and _interval(d.get("ci")) is not None
                and isinstance(d.get("diff"), (int, float))]

    def bench(self) -> dict | None:
        obj = self._json(runs.BENCH_FILE)
        return obj if _rows(obj) is not None else None

    def benchmarks(self) -> dict | None:
        """benchmarks.json (`hopscotch eval --benchmarks`, measure.benchmarks) as written, or None when absent,
        unreadable or of another format_version; benchmark_table() makes it a table."""
        res = self._json(runs.BENCHMARKS_FILE)  # a JSON file: no need for the scorer (and torch) to read it
        return res if isinstance(res, dict) and res.get("benchmarks") and res.get("format_version") == 1 else None

    def fidelity(self) -> pd.DataFrame:
        """One row per variant: variant, blocks, nll, kl, agreement (and more columns from eval.json)."""
        ev = self.eval_rows()
        if ev:
            return pd.DataFrame(ev)
        res = self.manifest.get("results") or {}
        out = []
        if isinstance(res.get("eval_loss_original"), (int, float)):
            out.append({"variant": "original", "attention": [], "nll": res["eval_loss_original"], "kl": 0.0,
                        "agreement": 1.0})
        entries = [("hopscotch", self.selected, res)] + [(n, b.get("attention") or [], b)
                                                          for n, b in self.baselines().items()]
        for name, blocks, r in entries:
            for tag, suffix in (("trained", ""), ("unscaled", "-unscaled")):
                if isinstance(r.get(f"eval_loss_{tag}"), (int, float)):
                    out.append({"variant": name + suffix, "attention": list(blocks), "nll": r[f"eval_loss_{tag}"],
                                "kl": r.get(f"eval_kl_{tag}"), "agreement": r.get(f"eval_agreement_{tag}")})
        return pd.DataFrame(out, columns=["variant", "attention", "nll", "kl", "agreement"])

    # -------------------------------------------------------------------------------------- data
    def prompts(self, split: str = "eval", n: int | None = None) -> list[str]:
        obj = self._json(runs.PROMPTS_FILE, {}) or {}
        out = [r["prompt"] for r in obj.get(split) or [] if isinstance(r, dict) and r.get("prompt")]
        return out[:n] if n is not None else out

    def answers(self, split: str = "eval", n: int | None = None):
        """The model's own answers (data.Answer) for the held-out (or calibration) prompts."""
        from ..method.data import Answer

        obj = self._json(runs.PROMPTS_FILE, {}) or {}
        n_calib = len(obj.get("calib") or [])
        rows = sorted(self._jsonl(runs.ANSWERS_FILE), key=lambda a: a.get("index", 0))
        keep = [Answer.from_json(a) for a in rows if (a.get("index", 0) >= n_calib) == (split == "eval")]
        return keep[:n] if n is not None else keep

    def log(self, lines: int = 30) -> str:
        path = self.dir / runs.LOG_FILE
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # -------------------------------------------------------------------------------------- summary
    def summary(self) -> dict:
        """The key numbers of a run, for a table of runs."""
        m = self.manifest
        s = m.get("settings") or {}
        r = m.get("results") or {}
        return {
            "name": m.get("name", self.name), "example": self.example, "state": m.get("state", "?"),
            "stage": m.get("stage"), "model": (m.get("model") or {}).get("source") or s.get("model"),
            "mode": "given" if s.get("blocks") is not None else s.get("mode"), "k": s.get("k"),
            "selected": self.selected, "baselines": list(s.get("baselines") or []),
            "loss_original": r.get("eval_loss_original"), "loss_unscaled": r.get("eval_loss_unscaled"),
            "loss_trained": r.get("eval_loss_trained"), "kl_trained": r.get("eval_kl_trained"),
            "agreement_trained": r.get("eval_agreement_trained"), "created": m.get("created"),
            "minutes": round(sum((m.get("timings") or {}).values()) / 60, 1) if m.get("timings") else None,
            "path": str(self.dir),
        }


def example_dirs(root: str | os.PathLike) -> list[Path]:
    """Bundled example runs: `root` itself if it is a run, else its subdirectories named example-run*."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.is_dir() and (d / MANIFEST).is_file()
            and (d.name.startswith("example-run") or root.name != "assets")]


def list_runs(runs_dir: str | os.PathLike, examples: list[Path] = ()) -> list[dict]:
    """Examples (read-only) then the runs in `runs_dir`, each a `RunView.summary()` whose state comes from
    jobs.status (so a live job shows running / stopping, a dead one interrupted); jobs that have not yet
    created their run directory are listed as starting."""
    out = [{**RunView(d, example=True).summary(), "state": RunView(d).manifest.get("state", "?")} for d in examples]
    root = Path(runs_dir).expanduser()
    names = {n for n in jobs.job_names(root)
             if ((jobs.record(root, n) or {}).get("command") or ["?"])[0] in jobs.PIPELINE_COMMANDS}
    if root.is_dir():
        names |= {d.name for d in root.iterdir() if d.is_dir() and (d / MANIFEST).is_file()}
    for name in sorted(names):
        st = jobs.status(root, name)
        if st["state"] == runs.MISSING:
            continue
        view = RunView(root / name)
        row = view.summary() if view.exists() else {"name": name, "example": False, "path": str(root / name)}
        row.update(state=st["state"], stage=st.get("stage") or row.get("stage"))
        out.append(row)
    return out
