"""Compressed models that leave the tool: one call, four formats, nothing half-written.

    import hopscotch_core as hc
    hc.export(hs, "out/", format="compact")            # hc.load_model("out/"): skipped weights absent
    hc.export(hs, "out/", format="hf")                 # stock AutoModelForCausalLM.from_pretrained("out/")
    hc.export("runs/NAME", "out/", format="gguf", quant="q8_0")   # llama.cpp: one .gguf file in out/
    hc.export(hs, "out/", format="deci")   # vLLM / SGLang serve it; from_pretrained("out/", trust_remote_code=True)

    hopscotch export (--model M --skip 3,6 | --adapter DIR | --run NAME) --format compact|hf|gguf|deci
                     [--quant f32|f16|q8_0|q4_k_m|...] --out DIR [--force]

Formats:
- compact: the weights of skipped blocks are absent and the scalars are kept (hopscotch.json); only
  `hc.load_model` loads it. Its config.json names model type "hopscotch_compact", so stock transformers refuses it
  with a ValueError instead of filling the missing blocks with random weights.
- hf: every scalar folded into ordinary weights (folding.py): a plain checkpoint of the original architecture
  that stock transformers, vLLM, TGI or lm-eval load with no code of ours. Skipped attention stays computed
  (zero output projection) - this format is for portability, not speed.
- gguf: llama.cpp's deci architecture with attention-free layers (gguf_export.py); the speed-up reaches llama.cpp.
- deci: NVIDIA's Nemotron-NAS / DeciLM layout (deci_export.py): skipped attention absent from config and weights,
  everything folded. vLLM and SGLang serve it natively (no attention, no KV cache in skipped layers); stock
  transformers runs it with the modeling file the folder carries (trust_remote_code=True), with the speed-up.

The compact, hf and deci folders carry the tokenizer (given, else the one where hc.load_model found the model, else
refused), its chat template and the generation config. Memory: the fold copies only the weights it changes and
the writers stream one tensor at a time, so an export needs the model plus those weights plus one tensor
(bench/bench_export.py measures it). A GGUF's check runs the whole file in llama.cpp, whose pages then sit beside
the source model's; release_source=True (the CLI's choice: its model is its own) frees the model first.

Every export checks its input before any work (format, quantization, output folder, skip set representable,
scalars foldable, tokenizer known), writes into a temporary folder beside `out` and renames it into place, so an
interrupted or failed export leaves nothing behind. `hopscotch_export.json` in the folder records what was written and the
logit check made on it (max |logit diff| against the attached model on a probe input).

The check of compact, hf and deci folders is dtype-aware. The exported model computes what the attached model computes
in real arithmetic, but rounds differently (folded weights, products in another order), and in bf16 / fp16 two
equally valid roundings of a deep model can land far apart (a random Llama-3.2-1B-shaped model in bf16: ~0.2 of
the largest logit). So the export first measures that model's rounding floor in its own dtype: the attached
model run again with its residual stream carried at a scale c (embeddings times c, every branch weight b times c,
the epsilon of each norm reading the stream times c^2: exact in real arithmetic for pre-norm families, the very
argument the fold rests on),
for two c, and the floor is the larger relative logit difference. An export is refused when its difference
exceeds max(FP32_LIMIT, FLOOR_FACTOR x floor): in fp32 the floor is ~1e-6 and the fixed 1e-2 decides, as before;
in bf16 the export may differ by a few roundings' worth, never by more.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..fileio import current_umask

FORMATS = ("compact", "hf", "gguf", "deci")
EXPORT_FILE = "hopscotch_export.json"
PROBE_TEXT = ("Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
              "May. How many clips did Natalia sell altogether? Answer: 48 + 24 = 72.")


def check_request(out_dir: str | os.PathLike, format: str, quant: str | None, force: bool) -> tuple[Path, str | None]:
    """Validate what can be validated before loading anything; returns (out path, normalised quant)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    q = None
    if format == "gguf":
        from .gguf_export import check_quant

        q = check_quant(quant)
    elif quant not in (None, "", "f32"):
        raise ExportError(f"--quant {quant} applies to --format gguf; the {format} format keeps the model's dtype")
    out = Path(os.path.expanduser(str(out_dir)))
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder (it is created)")
    _refuse_nonempty(out, force)
    if not out.parent.exists():
        raise ExportError(f"the parent folder of --out, {out.parent}, does not exist")
    return out, q


def _refuse_nonempty(out: Path, force: bool) -> None:
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} is not empty; choose a new folder or pass --force to replace it")


def _from_run(path: Path, model=None, device=None, dtype=None):
    from ..engine.loading import load_model
    from ..method.pipeline import check_run_model
    from ..method.runs import Run
    from ..engine.scaling import load_adapter

    run = Run(path)
    adapter = run.file("adapter")
    if not adapter.is_dir():
        raise ExportError(f"run {run.name!r} has no trained adapter yet (state {run.manifest.get('state')!r}); "
                          f"finish it first: hopscotch run --resume {run.name}")
    tok = None
    if model is None:
        s = run.manifest["settings"]
        model, tok = load_model(s["model"], device=device or s.get("device"), dtype=dtype or s.get("dtype"))
    check_run_model(run, model)
    return load_adapter(model, adapter), tok


def resolve_source(source, model=None, tokenizer=None, device=None, dtype=None):
    """(handle, tokenizer, owned): `source` is a Hopscotch handle, a run directory or an adapter directory."""
    from ..engine.artifacts import META_FILE, read_artifact
    from ..engine.scaling import Hopscotch, load_adapter

    if isinstance(source, Hopscotch):
        source._check()
        return source, tokenizer, False
    path = Path(os.path.expanduser(str(getattr(source, "dir", source))))
    if (path / "manifest.json").is_file():
        hs, tok = _from_run(path, model, device, dtype)
        return hs, tokenizer or tok, True
    if (path / META_FILE).is_file():
        read_artifact(path, kind="adapter")
        if model is None:
            raise ExportError(f"{path} is an adapter; give the model it belongs to (model=..., CLI --model)")
        return load_adapter(model, path), tokenizer, True
    raise ExportError(f"{path} is neither a run directory (manifest.json) nor an adapter (hopscotch.json)")


def source_gguf_of(model):
    from .gguf_export import source_gguf

    return source_gguf(model)


def source_tokenizer(model):
    """The tokenizer of the place `model` was loaded from by hc.load_model (the embedded default, a folder, a
    .gguf file, a Hub id in the local cache), or None when there is none."""
    src = str(getattr(model, "_hopscotch_source", "") or "")
    if not src:
        return None
    from transformers import AutoTokenizer

    from ..engine.loading import _has_tokenizer, _quiet_transformers, ensure_default_cached

    path = Path(src)
    try:
        with _quiet_transformers():
            if src.startswith("default:"):
                return AutoTokenizer.from_pretrained(str(ensure_default_cached(progress=False)))
            if path.is_file() and path.suffix.lower() == ".gguf":
                return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            if path.is_dir():
                return AutoTokenizer.from_pretrained(str(path)) if _has_tokenizer(path) else None
            return AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError):
        return None


def probe_ids(model, tokenizer=None, n: int = 32) -> torch.Tensor:
    """A fixed probe input: the tokenized PROBE_TEXT, else fixed pseudo-random ids."""
    if tokenizer is not None:
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][:, :n]
        if ids.shape[1] >= 4:
            return ids
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


FP32_LIMIT = 1e-2  # the fixed bound (relative to max |logit|): far above fp32 rounding and the fold's eps effect
# An export may differ from the attached model by a few roundings' worth: the floor is the larger of two draws of
# one other rounding, the maximum over every logit of the probe, and that statistic varies by tens of percent
# from draw to draw (measured: see docs/export.md); a genuine error (a block's weights off by a scale, a wrong
# skip set) lands an order of magnitude or more beyond it.
FLOOR_FACTOR = 4.0
FLOOR_SCALES = (1.125, 0.875)  # not powers of two, so every rescaled product rounds differently


def compare_logits(ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    ref, got = ref.double().cpu(), got.double().cpu()
    diff = (ref - got).abs().max().item()
    scale = ref.abs().max().item()
    return {"max_abs_diff": diff, "max_abs_logit": scale, "rel_diff": diff / max(scale, 1e-30),
            "greedy_agree": float((ref.argmax(-1) == got.argmax(-1)).double().mean().item()),
            "positions": int(ref.reshape(-1, ref.shape[-1]).shape[0])}


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    dev = next(model.parameters()).device
    return model(ids.to(dev)).logits[0].float().cpu()


@torch.no_grad()
def rounding_floor(hs, ids: torch.Tensor, ref: torch.Tensor) -> float | None:
    """How far two equally valid roundings of the attached model's computation land, relative to max |logit|.

    The attached model is run with its residual stream carried at scale c: the embeddings times c and every
    branch weight b times c, so each layer computes c times what it computed (its branches read the stream
    through a norm, which removes c exactly with its epsilon times c^2) and the final norm removes c again. In
    real arithmetic the logits are unchanged; in the model's dtype every product rounds differently. None where
    a family's branches read the raw stream (no norm removes c there), a norm's epsilon is not an attribute we
    can rescale, or the handle runs per-thread / per-row scalars: the fixed bound applies alone.
    """
    from ..engine.families import final_norm
    from ..engine.scaling import _mine

    branch = hs.family.layer
    if branch.attn_in_norm is None or branch.mlp_in_norm is None:
        return None
    if _mine(hs) is not None or hs._rows is not None:  # scalars set per thread / per row: set_scales would not act
        return None
    norms = [final_norm(hs.model)] + [layer.get_submodule(n[0]) for layer in hs.family.layers
                                      for n in (branch.attn_in_norm, branch.mlp_in_norm)]
    eps = [(m, a, getattr(m, a)) for m in norms for a in ("variance_epsilon", "eps")
           if isinstance(getattr(m, a, None), float)]
    if len(eps) != len(norms):  # an epsilon we cannot rescale: c would change the norms' outputs
        return None
    old = hs.scales.detach().clone()
    worst = 0.0
    try:
        for c in FLOOR_SCALES:
            s = old.clone()
            s[:, [0, 2]] *= c
            hs.set_scales(s)
            for m, a, e in eps:  # norm(c x) with eps c^2 = norm(x) with eps, exactly in real arithmetic
                setattr(m, a, e * c * c)
            hook = hs.model.get_input_embeddings().register_forward_hook(lambda m, i, o, c=c: o * c)
            try:
                alt = _logits(hs.model, ids)
            finally:
                hook.remove()
            worst = max(worst, compare_logits(ref, alt)["rel_diff"])
    finally:
        hs.set_scales(old)
        for m, a, e in eps:
            setattr(m, a, e)
    return worst


def check_limit(hs, ids: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """The bound an exported model's logits must meet: the fixed one, or a few times the dtype's floor."""
    t0 = time.perf_counter()
    floor = rounding_floor(hs, ids, ref)
    limit = FP32_LIMIT if floor is None else max(FP32_LIMIT, FLOOR_FACTOR * floor)
    return {"dtype": str(next(hs.model.parameters()).dtype).removeprefix("torch."), "rounding_floor": floor,
            "floor_factor": FLOOR_FACTOR, "fixed_limit": FP32_LIMIT, "limit": limit,
            "floor_s": round(time.perf_counter() - t0, 2)}


def llamacpp_logits(path: Path, ids: list[int], n_threads: int | None = None) -> torch.Tensor:
    """Logits of every position of `ids` computed by llama.cpp from the GGUF at `path`."""
    from .llamacpp import LlamaCpp

    with LlamaCpp(path, n_ctx=max(64, len(ids) + 8), n_threads=n_threads, logits_all=True) as lm:
        return torch.from_numpy(lm.logits(ids))


def export(
    source, out_dir: str | os.PathLike, format: str = "compact", quant: str | None = None, force: bool = False, *,
    model=None, tokenizer=None, tokenizer_gguf: str | os.PathLike | None = None, verify: bool = True,
    fold: bool = True, device=None, dtype=None, on_progress: Callable[[int, int, dict], None] | None = None,
    release_source: bool = False,
) -> Path:
    """Write the model of `source` (a Hopscotch handle, run directory or adapter directory) to `out_dir`.

    See the module docstring for the formats. Returns the output folder. Raises ExportError (and its kin from
    folding / gguf_export) before writing anything when the request cannot be satisfied exactly.

    release_source=True (GGUF): free the source model's weights once the file is written, before llama.cpp loads
    it for the check (which compares with logits taken before the write), so the model and the file are never
    resident together; the model and handle are unusable afterwards. For callers that drop the model after the
    export (the CLI does); a model that export loads itself (a run directory without model=) is always released.
    """
    out, q = check_request(out_dir, format, quant, force)
    hs, tok, owned = resolve_source(source, model, tokenizer, device, dtype)
    try:
        if tok is None and (format != "gguf" or (tokenizer_gguf is None and source_gguf_of(hs.model) is None)):
            tok = source_tokenizer(hs.model)
        if tok is None and format != "gguf":
            src = getattr(hs.model, "_hopscotch_source", None)
            raise ExportError(
                f"a {format} folder carries the model's tokenizer (and its chat template), but none is known for "
                f"this model ({'loaded from ' + str(src) if src else 'not loaded with hc.load_model'}, no tokenizer "
                "files found there); pass tokenizer= (the model's Hugging Face tokenizer) to hc.export")
        release = release_source or (owned and model is None)
        return _export(hs, tok, out, format, q, force, tokenizer_gguf, verify, fold, on_progress,
                       _provenance(source), release)
    finally:
        if owned:
            hs.detach()


def _provenance(source) -> dict[str, Any]:
    """Where the scalars came from: a run (its name and objective), an adapter folder, or a handle in memory."""
    from ..engine.artifacts import META_FILE
    from ..engine.scaling import Hopscotch

    if isinstance(source, Hopscotch):
        return {"scalars_from": "a Hopscotch handle in memory"}
    path = Path(os.path.expanduser(str(getattr(source, "dir", source))))
    if (path / "manifest.json").is_file():
        settings = json.loads((path / "manifest.json").read_text()).get("settings") or {}
        return {"scalars_from": "run", "run": path.name, "objective": settings.get("objective")}
    meta = json.loads((path / META_FILE).read_text())
    return {"scalars_from": "adapter", "adapter": str(path.resolve()), "objective": meta.get("objective")}


def _export(hs, tok, out: Path, format: str, q, force, tokenizer_gguf, verify, fold, on_progress,
            provenance: dict[str, Any], release: bool = False) -> Path:
    from ..engine import artifacts
    from ..engine.folding import check_foldable, eps_effect_bound, fold_model
    from ..engine.loading import save_model

    layout = None
    if format == "gguf":
        from .gguf_export import plan

        plan(hs)  # refuses what llama.cpp cannot represent, before the fold and any file
    elif format == "deci":
        from .deci_export import plan as deci_plan

        layout = deci_plan(hs)  # refuses what the serving engines' deci layout cannot represent
    if format in ("hf", "gguf", "deci"):
        check_foldable(hs)
    ids = probe_ids(hs.model, tok)
    ref = _logits(hs.model, ids) if verify else None
    record: dict[str, Any] = {
        "format": format, "quant": q, "skipped": list(hs.skipped), "skipped_mlp": list(hs.skipped_mlp),
        "scales": hs.effective_scales().tolist(), "base": artifacts.model_identity(hs.model),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "provenance": provenance,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if format == "compact":
            small = hs.compact(fold=fold, share=True)
            record["parameters"] = {"before": sum(p.numel() for p in hs.model.parameters()),
                                    "after": sum(p.numel() for p in small.parameters())}
            if verify:
                record["check"] = {"against": "attached model, in memory", **compare_logits(ref, _logits(small, ids))}
            save_model(small, tmp, tokenizer=tok)
        elif format == "hf":
            folded = fold_model(hs, share=True)  # copies only the weights the fold changes
            record["max_eps_effect"] = eps_effect_bound(hs, ids)
            if verify:
                record["check"] = {"against": "attached model, in memory", **compare_logits(ref, _logits(folded, ids))}
            save_model(folded, tmp, tokenizer=tok)
            del folded
        elif format == "deci":
            from .deci_export import describe, write_deci

            folded = fold_model(hs, share=True)
            record["max_eps_effect"] = eps_effect_bound(hs, ids)
            deci, _ = write_deci(folded, hs, layout, tmp, tokenizer=tok, provenance=provenance)
            record["deci"] = describe(layout)
            record["parameters"] = {"before": sum(p.numel() for p in hs.model.parameters()),
                                    "after": sum(p.numel() for p in deci.parameters())}
            if verify:
                record["check"] = {"against": "attached model, in memory (the folder's own modeling code)",
                                   **compare_logits(ref, _logits(deci, ids))}
            del folded, deci
        else:
            from .gguf_export import file_name, write_gguf

            name = file_name(hs, q)
            record["gguf"] = write_gguf(hs, tmp / name, quant=q, tokenizer=tok, tokenizer_gguf=tokenizer_gguf,
                                        on_progress=on_progress, provenance=provenance)
            record["file"] = name
            record["max_eps_effect"] = eps_effect_bound(hs, ids)
            if release:
                _release_weights(hs.model)
            if verify:
                try:
                    got = llamacpp_logits(tmp / name, ids[0].tolist())
                    record["check"] = {"against": "attached model, llama.cpp run of the file",
                                       **compare_logits(ref, got)}
                except ImportError as e:
                    record["check"] = {"skipped": str(e)}
        if verify and format != "gguf":
            chk = record["check"]
            chk.update(check_limit(hs, ids, ref))
            if chk["rel_diff"] > chk["limit"]:
                floor = (f"{FLOOR_FACTOR:g} x this model's {chk['dtype']} rounding floor {chk['rounding_floor']:.3g}"
                         if chk["rounding_floor"] is not None else "no rounding floor for this family")
                raise ExportError(
                    f"the exported model's logits differ from the attached model's by {chk['max_abs_diff']:.3g} "
                    f"({chk['rel_diff']:.3g} of the largest logit), beyond the check's limit {chk['limit']:.3g} "
                    f"(the larger of {FP32_LIMIT:g} and {floor}); nothing was written (please report this)")
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2))
        _move_into_place(tmp, out, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _release_weights(model) -> None:
    """Free the tensors of a model nothing will run again (a GGUF check reads the file, not the model)."""
    for t in [*model.parameters(), *model.buffers()]:
        t.data = torch.empty(0, dtype=t.dtype, device=t.device)
    gc.collect()


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it private
    old = None
    if out.exists():
        _refuse_nonempty(out, force)  # again at rename time: it may have filled up meanwhile
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_export(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The record an export wrote (format, skip set, scalars, logit check), or ExportError."""
    p = Path(out_dir) / EXPORT_FILE
    if not p.is_file():
        raise ExportError(f"{out_dir} holds no {EXPORT_FILE}: not a Hopscotch export")
    return json.loads(p.read_text())


def gguf_file(out_dir: str | os.PathLike) -> Path:
    """The single .gguf file of a gguf export folder."""
    files = sorted(Path(out_dir).glob("*.gguf"))
    if len(files) != 1:
        raise ExportError(f"{out_dir} should hold exactly one .gguf file, found {len(files)}")
    return files[0]
