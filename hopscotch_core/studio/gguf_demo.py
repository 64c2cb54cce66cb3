"""The original model in transformers beside the compressed model in llama.cpp: the GGUF export it needs (as a job,
cached on disk), and the two generations streamed side by side with live tokens/s.

    req = gguf_request("runs", model="default", run="my-run", skip=[4, 17], adapter="runs/my-run/adapter",
                       quant="q8_0")                  # where the file goes, the job's name and its CLI arguments
    check_gguf(model, [4, 17], "q8_0", lock=lock)   # the writer's refusal (layer 0, family, RoPE ...) before any job
    path = cached_gguf(req.out)                     # the finished file, or None (then: jobs.start(req.args, ...))
    for frame in stream_runtimes(model, tok, "What is 12 * 3?", path, max_new_tokens=32, lock=lock):
        frame.a, frame.b                            # token ids so far: transformers original, llama.cpp GGUF
        frame.stats[0]["tok_s"], frame.stats[1]["first_token_s"]

The cache: one folder per (model, dtype, run, skip set, trained state, quant) under RUNS/exports/gguf-demo, its
name ending in a hash of that key (the folder's `hopscotch_export.json` records the skip set, scalars and quant
that went in). The export
writes into a temporary folder and renames it into place at the end, so a folder that exists is a finished export;
an interrupted one leaves nothing that is later taken for done. The trained state is the content hash of the
adapter's files, so a run trained further gets a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GGUFDemoError, HopscotchError
from .commands import export_args

DEMO_DIR = Path("exports") / "gguf-demo"  # under the runs directory
DEFAULT_QUANT = "q8_0"
DEMO_QUANTS = ("f32", "f16", "q8_0")      # written by gguf-py alone (no llama.cpp quantizer pass)
EXPORT_FILE = "hopscotch_export.json"     # integrations.export.EXPORT_FILE, named here without importing torch


# ------------------------------------------------------------------------------------------------ the cache
def adapter_digest(adapter: str | os.PathLike | None) -> str | None:
    """sha256 of an adapter folder's files (names and bytes), or None without one: the trained state."""
    if adapter is None:
        return None
    root = Path(adapter)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_key(model: str, dtype: str | None, run: str | None, skip: Sequence[int], adapter: str | os.PathLike | None,
              quant: str) -> dict:
    """What a demo GGUF depends on: the model source and dtype, the run it came from, the skip set, the trained
    state (the adapter's content hash, None when unscaled) and the weight type."""
    return {"model": str(model), "dtype": dtype or None, "run": run, "skip": sorted({int(b) for b in skip}),
            "trained": adapter_digest(adapter), "quant": quant}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class GGUFRequest:
    key: dict
    out: Path              # the export folder (exists only once the export is finished)
    job: str               # the job's name in the runs directory
    args: list[str] = field(default_factory=list)   # `hopscotch ARGS`


def gguf_request(runs_dir: str | os.PathLike, *, model: str, skip: Sequence[int], quant: str = DEFAULT_QUANT,
                 run: str | None = None, adapter: str | os.PathLike | None = None,
                 dtype: str | None = None) -> GGUFRequest:
    """The export a side-by-side view needs: `model` with the `skip` set, scaled by `adapter` (a run's trained
    adapter folder) when given, as a GGUF of weight type `quant`. Refused (GGUFDemoError) for a quant outside
    DEMO_QUANTS and for scalars without a skipped block."""
    if quant not in DEMO_QUANTS:
        raise GGUFDemoError(f"weight type {quant!r} is not offered here; use one of {', '.join(DEMO_QUANTS)} "
                            "(others: hopscotch export --format gguf --quant ...)")
    skip = sorted({int(b) for b in skip})
    if adapter is not None and not skip:
        raise GGUFDemoError("the trained scalars belong to a skip set: skip at least one block, or switch "
                            "'Scaled' off to compare the original model in both runtimes")
    key = cache_key(model, dtype, run, skip, adapter, quant)
    stem = f"{run or 'model'}-k{len(skip)}-{quant}-{key_hash(key)}"
    out = Path(runs_dir).expanduser() / DEMO_DIR / stem
    args = export_args("gguf", out, model=model, dtype=dtype, adapter=adapter, skip=skip, quant=quant)
    return GGUFRequest(key, out, f"gguf-{key_hash(key)}", args)


def finished_export(out: str | os.PathLike) -> bool:
    """Whether `out` is a finished export folder (the export renames its folder into place only at the end)."""
    return (Path(out) / EXPORT_FILE).is_file()


def cached_gguf(out: str | os.PathLike) -> Path | None:
    """The .gguf of a finished export folder, or None (absent: not exported yet, or interrupted)."""
    out = Path(out)
    files = sorted(out.glob("*.gguf")) if finished_export(out) else []
    return files[0] if len(files) == 1 else None


def prepare_out(req: GGUFRequest) -> None:
    """Make the export's parent folder (the export itself refuses a missing parent)."""
    req.out.parent.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------------ checks
def llamacpp_problem() -> str | None:
    """Why llama.cpp cannot run here (llama-cpp-python missing: the install command), or None."""
    from ..integrations.gguf_export import LlamaCppMissingError, require_llama_cpp

    try:
        require_llama_cpp()
    except LlamaCppMissingError as e:
        return str(e)
    return None


def _planned(model, skip: Sequence[int]):
    """What a writer's plan() reads of a handle (family, config, layer count, skip set), from the model and a skip
    set alone: the writers' refusals are asked before any job, without attaching or locking the model."""
    from types import SimpleNamespace

    from ..engine.families import get_family
    from ..errors import check_blocks

    family = get_family(model)
    blocks = sorted({int(b) for b in skip})
    check_blocks(blocks, family.num_layers)
    return SimpleNamespace(family=family, model=model, num_layers=family.num_layers, skipped=blocks, skipped_mlp=[])


def check_gguf(model, skip: Sequence[int], quant: str = DEFAULT_QUANT, lock: threading.Lock | None = None) -> None:
    """Refuse, with the GGUF writer's own message, what it would refuse (attention skipped in the first layer of
    the file, a family or RoPE llama.cpp's deci layer does not compute, a bad weight type), before any job. The
    writer's plan reads only the model's config, family and the skip set, so the model is neither attached nor
    locked: the check never waits behind a generation or the drift view (`lock` is accepted and not needed)."""
    from ..integrations.gguf_export import check_quant, plan

    check_quant(quant)
    plan(_planned(model, skip))


def check_deci(model, skip: Sequence[int]) -> None:
    """Refuse, with the deci writer's own message, what it would refuse (a family outside the Llama layer, a
    sliding window, attention skipped in the first layer that computes anything), before any job. Like
    check_gguf, it reads only the model's config, family and the skip set."""
    from ..integrations.deci_export import plan

    plan(_planned(model, skip))


# ------------------------------------------------------------------------------------------------ streaming
def side_stats(start: float, times: Sequence[float]) -> dict:
    """Timing of one side from the times its tokens arrived: seconds to the first token (from `start`) and
    tokens/s from the first token to the last (None with fewer than two tokens)."""
    n = len(times)
    rate = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None
    return {"tokens": n, "first_token_s": times[0] - start if n else None, "tok_s": rate}


@dataclass
class RuntimeFrame:
    """Where the two sides stand: token ids so far (a: transformers original, b: llama.cpp GGUF), whether each
    ended, its timing (side_stats), the prompt lengths each runtime built, and the GGUF's load time."""

    a: list[int]
    b: list[int]
    done: tuple[bool, bool]
    stats: tuple[dict, dict]
    prompt_tokens: tuple[int, int]
    same_prompt: bool
    load_s: float


_DONE = object()


def stream_runtimes(model, tok, prompt: str, gguf: str | os.PathLike, *, max_new_tokens: int = 32, chat: bool = True,
                    lock: threading.Lock | None = None, n_threads: int | None = None,
                    n_ctx: int | None = None) -> Iterator[RuntimeFrame]:
    """Greedy answers of the unmodified `model` (transformers, its tokenizer's chat template) and of the `gguf`
    file (llama.cpp, the file's own chat template) to `prompt`, each in a thread of its own, started together
    once the file is loaded. Yields a RuntimeFrame whenever either side has new tokens, and a last one when both
    ended. llama.cpp gets `n_threads` (default: half of torch's threads), torch the rest (at least one).
    Closing the iterator stops both sides."""
    import torch

    from ..engine.generation import encode_prompt, eos_ids
    from ..integrations.llamacpp import LlamaCpp
    from .compare import stream_original

    ids_a = encode_prompt(tok, prompt, chat)
    if not ids_a:
        raise HopscotchError("the prompt is empty")
    eos = eos_ids(model, tok)
    total = torch.get_num_threads()
    n_threads = n_threads or max(1, total // 2)
    t = time.perf_counter()
    lm = LlamaCpp(gguf, n_ctx=n_ctx or max(256, len(ids_a) * 2 + max_new_tokens + 16), n_threads=n_threads)
    load_s = time.perf_counter() - t
    out: queue.Queue = queue.Queue()
    stop = threading.Event()

    def side(i: int, make) -> None:  # a worker thread: one runtime's tokens into the queue, then _DONE
        try:
            gen = make()
            for tok_id in gen:
                out.put((i, tok_id, time.perf_counter()))
                if stop.is_set():
                    gen.close()
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            out.put((i, e, time.perf_counter()))
        out.put((i, _DONE, time.perf_counter()))

    def original():
        prev = torch.get_num_threads()
        torch.set_num_threads(max(1, total - n_threads))
        try:
            yield from stream_original(model, ids_a, eos, max_new_tokens=max_new_tokens, lock=lock)
        finally:
            torch.set_num_threads(prev)

    try:
        ids_b = lm.prompt_ids(prompt, chat)
        if len(ids_b) + max_new_tokens > lm.llm.n_ctx():
            raise GGUFDemoError(f"the prompt ({len(ids_b)} tokens) and {max_new_tokens} new tokens do not fit the "
                                f"llama.cpp context of {lm.llm.n_ctx()} tokens; shorten the prompt")
        stop_b = set(eos) | {lm.eos}
        toks: list[list[int]] = [[], []]
        times: list[list[float]] = [[], []]
        done = [False, False]
        start = time.perf_counter()
        workers = [threading.Thread(target=side, args=(0, original), name="gguf-demo-transformers", daemon=True),
                   threading.Thread(target=side, args=(1, lambda: lm.stream(ids_b, max_new_tokens, stop=stop_b)),
                                    name="gguf-demo-llamacpp", daemon=True)]
        for w in workers:
            w.start()

        def frame() -> RuntimeFrame:
            return RuntimeFrame(list(toks[0]), list(toks[1]), (done[0], done[1]),
                                (side_stats(start, times[0]), side_stats(start, times[1])),
                                (len(ids_a), len(ids_b)), list(ids_a) == list(ids_b), load_s)

        try:
            while not all(done):
                items = [out.get()]
                while not out.empty():  # everything that arrived meanwhile: one frame for all of it
                    items.append(out.get_nowait())
                for i, item, when in items:
                    if item is _DONE:
                        done[i] = True
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        toks[i].append(int(item))
                        times[i].append(when)
                yield frame()
        finally:
            stop.set()
            for w in workers:
                w.join()
    finally:
        lm.close()
