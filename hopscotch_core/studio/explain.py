"""Exceptions as a message for people: what went wrong (the cause) and what to do about it (the fix).

    try: ...
    except Exception as e:
        print(explain(e, "loading the model"))     # "**Cause:** ... **Fix:** ..." (markdown), never a traceback

The core's own errors already say what was wrong; this adds the fix that fits their class, and recognises the
usual foreign failures (out of memory, a missing file, a model without a tokenizer).
"""

from __future__ import annotations

from ..errors import (
    AdapterMismatchError,
    ArtifactError,
    InvalidBlocksError,
    ModelNotAvailableError,
    UnsupportedArchitectureError,
)


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    name = type(e).__name__
    return name == "OutOfMemoryError" or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def cause_and_fix(e: BaseException, doing: str = "") -> tuple[str, str]:
    """(cause, fix) for exception `e`, raised while `doing` (e.g. "loading the model")."""
    from ..method.data import DataError
    from ..method.runs import RunError

    msg = str(e).strip() or type(e).__name__
    where = f" while {doing}" if doing else ""
    if is_oom(e):
        return (f"out of memory{where} ({type(e).__name__}).",
                ("pick a smaller dtype (bfloat16) or the CPU in the sidebar, shorten the generation or the context, "
                "close other jobs, or use a smaller model."))
    if isinstance(e, AdapterMismatchError):
        return (msg, ("this adapter (or run) belongs to another model: open a run made with the model loaded in the "
                     "sidebar, or load the model the run was made with."))
    if isinstance(e, ModelNotAvailableError):
        return (f"the model is not available offline: {msg}",
                "use 'default' (the embedded model), a local model directory or a .gguf file in the sidebar.")
    if isinstance(e, UnsupportedArchitectureError):
        return (msg, ("pick a model of a supported family (Llama, Mistral, Qwen2/3, Granite, Gemma 2/3, Phi-3, "
                     "OLMo 2)."))
    if isinstance(e, DataError):
        return (f"the data cannot be used: {msg}",
                ("give a .jsonl, .json or .csv file with one prompt per record, in a column named question, prompt, "
                "instruction, input or text (or name the column), or pick the bundled GSM8K problems."))
    if isinstance(e, InvalidBlocksError):
        return (msg, "choose block indices between 0 and the number of layers - 1.")
    if isinstance(e, ArtifactError):
        return (msg, "the saved file is missing or damaged: rerun the step that writes it, or pick another run.")
    if isinstance(e, RunError):
        return (msg, "pick another run name or runs directory, or delete the damaged run on the Runs page.")
    if isinstance(e, FileNotFoundError):
        return (msg, "check the path (relative paths start from the folder the app was started in).")
    if isinstance(e, PermissionError):
        return (msg, "choose a folder you can write to (set HOPSCOTCH_RUNS for the runs directory).")
    return (f"{type(e).__name__}{where}: {msg}",
            ("check the inputs above; if it persists, run the same step with the `hopscotch` command and "
            "HOPSCOTCH_DEBUG=1 to see where it fails."))


def explain(e: BaseException, doing: str = "") -> str:
    """Markdown: **Cause:** ... **Fix:** ..."""
    cause, fix = cause_and_fix(e, doing)
    return f"**Cause:** {cause}\n\n**Fix:** {fix}"
