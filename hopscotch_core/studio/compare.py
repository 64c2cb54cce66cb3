"""The original model beside a skipped one, on one shared model object: streamed greedy generations, the first
token where they part, per-layer MMD on a few prompts, and the FLOP / memory estimate of a skip set.

    for orig, mod in stream_pair(model, tok, "What is 12 * 3?", skipped=[4, 17], lock=lock):
        ...                                   # token ids so far, one more token on each side per step
    at = first_divergence(orig, mod)          # index of the first differing token, or None
    html = highlight_html(tok, mod, at)       # the text with that token marked
    mmd = prompt_mmd(model, tok, prompts, skipped=[4, 17], lock=lock)     # one value per layer
    estimate(model, skipped=[4, 17], contexts=(128, 512, 2048))          # FLOP bound, KV cache, parameters

The model may be shared by several users (the app's cached model): every function that runs it takes `lock` and
attaches Hopscotch only while it holds the lock, detaching before it lets go, so one caller's skip set never
reaches another caller's forward pass and the model is left exactly as loaded.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import torch

from ..engine.cache import cache_kwarg
from ..engine.generation import encode_prompt, eos_ids
from ..method.data import Example, pack
from ..errors import HopscotchError
from ..engine.priority import gate
from ..engine.scaling import attach, compact_info, handle_of

PRESET_PROMPTS = (
    "What is 12 * 3? Explain briefly.",
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"),
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
)


def _take_turn(model, lock: threading.Lock | None, should_stop=None) -> None:
    """Background work's way to the lock: wait while interactive work runs on the model (priority.gate), take the
    lock, and give it back at once if an interactive request came in meanwhile (it goes first). Returns holding
    the lock (when there is one)."""
    g = gate(model)
    while True:
        g.wait_turn(should_stop=should_stop)  # a stop while waiting: go on, the pass itself sees it and ends
        if lock is not None:
            lock.__enter__()  # (any context-manager lock)
        if not g.busy or (should_stop is not None and should_stop()):
            return
        if lock is not None:
            lock.__exit__(None, None, None)


@contextlib.contextmanager
def _borrowed(model, lock: threading.Lock | None, needed: bool, background: bool = False,
              should_stop=None) -> Iterator:
    """Hold the lock; within, a fresh Hopscotch handle (or None when not `needed`), detached on exit. With
    `background`, first wait for the turn of background work (_take_turn): a generation goes first."""
    if background:
        _take_turn(model, lock, should_stop)
        held = contextlib.ExitStack()
        if lock is not None:
            held.callback(lock.__exit__, None, None, None)
    else:
        held = lock or contextlib.nullcontext()
    with held:
        if handle_of(model) is not None:
            raise HopscotchError("the model has a Hopscotch handle attached by someone else; detach it first")
        if not needed:
            yield None
            return
        with attach(model) as hs:
            yield hs


def stream_pair(model, tok, prompt: str, skipped: Iterable[int] = (), scales: torch.Tensor | None = None, *,
                max_new_tokens: int = 48, chat: bool = True, lock: threading.Lock | None = None, hold_s: float = 0.5,
                parallel: str | None = None, channel_scales: torch.Tensor | None = None,
                lora: dict[str, torch.Tensor] | None = None) -> Iterator[tuple[list[int], list[int]]]:
    """Greedy decoding of the original model and of the model with `skipped` blocks (and optional [L, 4]
    `scales`) side by side: after each step, yields (original ids, modified ids), each grown by one token until
    it reaches an end-of-sequence token or `max_new_tokens`. Token ids exclude the prompt and EOS.

    The two sides run at the same time, each with its own KV cache, so each decodes at about the model's own
    single-sequence speed: `parallel="threads"` (the default on CPU) runs each side's step in its own thread with
    half the intra-op threads (Hopscotch.in_thread: exactly the kernels of a single-configuration forward);
    `parallel="batch"` (the default on GPU) runs both as the two rows of one batched forward (Hopscotch.per_row;
    equal up to the rounding of batched matmuls). The lock is held, and the handle attached, for up to `hold_s`
    seconds of steps at a time, so other users interleave without a re-attach per token; stopping the iteration
    early releases both. `channel_scales` ([L, 2, hidden], granularity channel) and low-rank deltas `lora`
    (Hopscotch.lora_state() form) run in threads (per_row takes [L, 4] scalars only).
    """
    if compact_info(model) is not None:
        raise HopscotchError("this is a compact model (attention already removed); load the original model to "
                             "compare it with a skipped version")
    skipped = sorted({int(b) for b in skipped})
    ids = encode_prompt(tok, prompt, chat)
    if not ids:
        raise HopscotchError("the prompt is empty")
    dev = model.device
    extra = channel_scales is not None or bool(lora)
    parallel = parallel or ("threads" if dev.type == "cpu" or extra else "batch")
    if parallel not in ("threads", "batch"):
        raise HopscotchError(f"parallel must be 'threads' or 'batch', not {parallel!r}")
    eos = eos_ids(model, tok)
    if extra and parallel == "batch":
        raise HopscotchError("parallel='batch' takes [L, 4] scalars only; use 'threads' with channel scales or "
                             "low-rank deltas")
    configs = [((), None), (skipped, scales)]
    thread_configs = [((), None, None, None), (skipped, scales, channel_scales, lora or None)]
    outs: list[list[int]] = [[], []]
    done = [False, False]
    caches: list = [None, None]
    feeds = [ids, ids]
    def take(side: int, tok_id: int) -> None:
        feeds[side] = [tok_id]
        if done[side]:
            return
        if tok_id in eos:
            done[side] = True
        else:
            outs[side].append(tok_id)

    def side_step(hs, side: int) -> tuple[list[int], object]:  # runs in a worker thread
        with hs.in_thread(*thread_configs[side]), torch.no_grad():
            return _greedy_step(model, [feeds[side]], caches[side])

    def submit(hs) -> dict:  # the next step of every side still decoding, in the workers
        return {side: pool.submit(side_step, hs, side) for side in (0, 1) if not done[side]}

    pool = None
    if parallel == "threads":
        from concurrent.futures import ThreadPoolExecutor

        each = max(1, torch.get_num_threads() // 2)
        pool = ThreadPoolExecutor(2, thread_name_prefix="stream_pair", initializer=torch.set_num_threads,
                                  initargs=(each,))
    step = 0
    jobs: dict = {}
    interactive = gate(model).interactive()  # background analysis of this model waits until the generation ends
    interactive.__enter__()
    try:
        while step < max_new_tokens and not all(done):
            with _borrowed(model, lock, True) as hs, torch.no_grad():
                until = time.perf_counter() + hold_s
                try:
                    while step < max_new_tokens and not all(done):
                        if pool is not None:
                            jobs = jobs or submit(hs)
                            for side, job in jobs.items():
                                (nxt,), caches[side] = job.result()
                                take(side, nxt)
                            jobs = {}
                        else:
                            with hs.per_row(configs):
                                nxt, caches[0] = _greedy_step(model, [feeds[0], feeds[1]], caches[0])
                            for side in (0, 1):
                                take(side, nxt[side])
                        step += 1
                        last = time.perf_counter() > until
                        if pool is not None and not last and step < max_new_tokens and not all(done):
                            jobs = submit(hs)  # the next step runs while the caller shows this one
                        yield list(outs[0]), list(outs[1])
                        if last:
                            break
                finally:
                    for job in jobs.values():  # never detach while a worker still runs a forward
                        job.cancel() or job.exception()
                    jobs = {}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        interactive.__exit__(None, None, None)


def _greedy_step(model, input_ids: list[list[int]], cache) -> tuple[list[int], object]:
    """One cached forward of `input_ids` (B rows of new tokens): each row's greedy next token, and the cache."""
    cache_kw = cache_kwarg(model.forward)
    out = model(input_ids=torch.tensor(input_ids, device=model.device), use_cache=True, logits_to_keep=1,
                **{cache_kw: cache})
    return out.logits[:, -1].argmax(-1).tolist(), getattr(out, "cache", None) or getattr(
        out, "past_key_values", None)


def stream_original(model, ids: Sequence[int], eos: set[int], *, max_new_tokens: int = 48,
                    lock: threading.Lock | None = None, hold_s: float = 0.5) -> Iterator[int]:
    """Greedy tokens of the unmodified model after the prompt `ids`, one at a time, KV cache kept (the original
    side when the other side runs elsewhere, e.g. in llama.cpp). Like stream_pair, it holds the lock for up to
    `hold_s` seconds of steps at a time and refuses a model someone left a Hopscotch handle on."""
    if not ids:
        raise HopscotchError("the prompt is empty")
    feed, cache, step = [list(ids)], None, 0
    while step < max_new_tokens:
        with _borrowed(model, lock, False), torch.no_grad():
            until = time.perf_counter() + hold_s
            while step < max_new_tokens:  # at least one step per turn with the lock
                (nxt,), cache = _greedy_step(model, feed, cache)
                if nxt in eos:
                    return
                step += 1
                feed = [[nxt]]
                yield nxt
                if time.perf_counter() > until:
                    break


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where the two token sequences differ (a shorter sequence that is a prefix of
    the other differs at its end), or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def split_at(tok, ids: Sequence[int], at: int | None) -> tuple[str, str, str]:
    """(text before token `at`, the text of token `at`, the rest), decoded so that the three join to the text
    of the whole sequence when the tokenizer allows it."""
    whole = _decode(tok, ids)
    if at is None or at >= len(ids):
        return whole, "", ""
    head = _decode(tok, ids[:at])
    upto = _decode(tok, ids[:at + 1])
    if upto.startswith(head) and whole.startswith(upto):
        return head, upto[len(head):], whole[len(upto):]
    return head, _decode(tok, ids[at:at + 1]), _decode(tok, ids[at + 1:])


def highlight_html(tok, ids: Sequence[int], at: int | None, title: str = "", done: bool = True) -> str:
    """HTML of the decoded text with token `at` marked (the first token where the two sides part). The outer div
    carries `data-tokens` (len(ids)) and `data-done` ("1" once the generation ended) for timing and tests."""
    head, mark, tail = split_at(tok, ids, at)

    def esc(s: str) -> str:
        return html.escape(s).replace("\n", "<br>")

    marked = (f'<mark title="first token that differs from the other side" '
              f'style="background:#ffd54f;padding:0 2px;border-radius:3px">{esc(mark) or "&#8709;"}</mark>'
              if at is not None else "")
    head_html = f"<div style='font-weight:600;margin-bottom:4px'>{esc(title)}</div>" if title else ""
    return (f"<div class='hopscotch-gen' data-tokens='{len(ids)}' data-done='{int(done)}'>{head_html}<div style='white-space:pre-wrap;font-family:monospace;"
            f"font-size:0.9rem;line-height:1.45'>{esc(head)}{marked}{esc(tail)}</div></div>")


# ----------------------------------------------------------------------------------------------- layer MMD
def prompt_rows(tok, prompts: Sequence[str], chat: bool = True, answers: Sequence = ()) -> list:
    """Packed rows (data.Row) of the prompts' tokens, or of data.Answer prompt + response tokens when given."""
    seqs = [list(a.prompt_ids) + list(a.response_ids) for a in answers] or [encode_prompt(tok, p, chat)
                                                                            for p in prompts]
    seqs = [s for s in seqs if s]
    if not seqs:
        raise HopscotchError("no tokens to measure on: give at least one non-empty prompt")
    examples = [Example(s, [-100] * len(s)) for s in seqs]
    return pack(examples, batch_tokens=max(len(s) for s in seqs))


def prompt_mmd(model, tok, prompts: Sequence[str] = PRESET_PROMPTS, skipped: Iterable[int] = (),
               scales: torch.Tensor | None = None, answers: Sequence = (), max_tokens: int = 256,
               lock: threading.Lock | None = None) -> list[float]:
    """metrics.layer_mmd between the original and the skipped model on the tokens of a few prompts (or of
    the model's own answers): per layer, the unbiased MMD^2 of the output hidden states."""
    from ..measure.metrics import layer_mmd

    rows = prompt_rows(tok, prompts, answers=answers)
    with _borrowed(model, lock, True) as hs:
        return layer_mmd(hs, rows, list(skipped), scales, max_tokens=max_tokens)


# ----------------------------------------------------------------------------------------------- estimate
def estimate(model, skipped: Iterable[int] = (), contexts: Sequence[int] = (128, 512, 2048)) -> list[dict]:
    """What skipping `skipped` saves at best, by counting (no timing): per context length, FLOPs per token and
    the FLOP-bound speed-up, KV-cache bytes per sequence and parameter bytes of the compact model."""
    from ..engine.families import get_family
    from ..measure.info import flops_per_token

    skipped = sorted({int(b) for b in skipped})
    ad = get_family(model)
    cfg = ad.text_config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elt = next(model.parameters()).element_size()
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or [None] * ad.num_layers
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    attn = [sum(p.numel() * p.element_size() for p in getattr(layer, ad.layer.attn_name).parameters())
            for layer in ad.layers]
    compact = params - sum(attn[i] for i in skipped)
    out = []
    for ctx in contexts:
        def kv(keep, ctx=ctx) -> int:
            per = 2 * kv_heads * head_dim * elt
            return sum(per * (min(ctx, window) if window and types[i] == "sliding_attention" else ctx)
                       for i in keep)
        full, skip = flops_per_token(model, ctx), flops_per_token(model, ctx, skipped)
        out.append({"context": ctx, "k": len(skipped), "blocks": skipped,
                    "gflops_per_token_original": full / 1e9, "gflops_per_token_skipped": skip / 1e9,
                    "flop_bound": full / skip,
                    "kv_cache_bytes_original": kv(range(ad.num_layers)),
                    "kv_cache_bytes_skipped": kv([i for i in range(ad.num_layers) if i not in skipped]),
                    "param_bytes_original": params, "param_bytes_compact": compact})
    return out


def survival(answers_kept: dict | None, bench: dict | None, scaled: bool) -> list[str]:
    """Sentences that put one side-by-side answer in proportion: how often the run's skip set keeps the original's
    right answers (answers-kept.json) and its benchmark accuracy (benchmarks.json), for the trained variant when
    `scaled`, else the unscaled one; [] when the run has neither file."""
    variant = "hopscotch" if scaled else "hopscotch-unscaled"
    lines = []
    for name, p in ((answers_kept or {}).get("probes") or {}).items():
        f, o = p["variants"].get(variant), p["variants"].get("original")
        if f is None or o is None:
            continue
        what = ("generated one-step arithmetic and word problems" if name == "arithmetic"
                else "held-out GSM8K prompts" if name == "gsm8k" else name)
        if f.get("kept") is None:
            lines.append(f"On {p['questions']} {what} the original answers none correctly, so there is nothing "
                         "to keep.")
            continue
        lo, hi = f["kept_ci"]
        lines.append(f"On {p['questions']} {what} the original answers {o['kept_of']} correctly; this skip set "
                     f"({'trained' if scaled else 'unscaled'}) still answers {f['kept']:.0%} of those correctly "
                     f"(95% interval {lo:.0%}–{hi:.0%}), and {f['acc']:.0%} of all (the original: {o['acc']:.0%}).")
    avg = ((bench or {}).get("average") or {}).get("variants", {}).get(variant)
    if avg and avg.get("kept") is not None:
        lo, hi = avg["kept_ci"]
        n = len(bench["average"]["benchmarks"])
        lines.append(f"On {n} multiple-choice benchmarks it keeps {avg['kept']:.1%} of the original's accuracy "
                     f"(95% interval {lo:.1%}–{hi:.1%}).")
    return lines
