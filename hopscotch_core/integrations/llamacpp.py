"""Run a GGUF with llama.cpp (llama-cpp-python): logits, greedy streaming and timings, for checks and the app.

    from hopscotch_core.integrations.llamacpp import LlamaCpp
    with LlamaCpp("out/model.gguf", n_ctx=2048, n_threads=2) as lm:
        logits = lm.logits([1, 504, 3458])          # (T, vocab) float32, every position
        for tok_id in lm.stream(prompt_ids, 32):     # greedy, KV cache kept across steps
            ...

Needs the `gguf` extra (llama-cpp-python); without it, LlamaCppMissingError names the extra to install.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .gguf_export import require_llama_cpp


class LlamaCpp:
    """One llama.cpp model and context on the CPU (GPU layers when llama.cpp was built with them)."""

    def __init__(self, path: str | os.PathLike, n_ctx: int = 2048, n_threads: int | None = None,
                 logits_all: bool = False, n_batch: int = 512):
        llama_cpp = require_llama_cpp()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        self.n_threads = n_threads or max(1, min(2, os.cpu_count() or 1))
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=self.n_threads, n_threads_batch=self.n_threads,
            logits_all=logits_all, n_batch=min(n_batch, n_ctx), verbose=False, seed=0,
        )
        self.path = path
        self._lib = llama_cpp

    # ------------------------------------------------------------------------------------------ basics
    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    @property
    def eos(self) -> int:
        return self.llm.token_eos()

    def chat_template(self) -> str | None:
        """The chat template the file carries (`tokenizer.chat_template`), or None."""
        return (self.llm.metadata or {}).get("tokenizer.chat_template") or None

    def prompt_ids(self, text: str, chat: bool = True) -> list[int]:
        """The prompt's token ids as llama.cpp's chat completion builds them: `text` as one user message in the
        file's own chat template (with the generation prompt, rendered by llama-cpp-python's Jinja2 formatter, as
        `create_chat_completion` and llama-server do), tokenized with special tokens; the plain text when `chat`
        is off or the file has no template."""
        template = self.chat_template() if chat else None
        if template is None:
            return self.tokenize(text)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def piece(i: int) -> str:
            return self.llm._model.token_get_text(i) if i != -1 else ""

        fmt = Jinja2ChatFormatter(template=template, eos_token=piece(self.llm.token_eos()),
                                  bos_token=piece(self.llm.token_bos()), stop_token_ids=[self.llm.token_eos()])
        res = fmt(messages=[{"role": "user", "content": text}])
        return self.tokenize(res.prompt, add_bos=not res.added_special)

    def _next(self) -> int:
        """Greedy next token from the logits of the last evaluated position."""
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) logits of a fresh evaluation of `ids` (needs logits_all=True)."""
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32, copy=True)

    # ------------------------------------------------------------------------------------------ decoding
    def stream(self, prompt_ids: list[int], max_new_tokens: int, stop: set[int] | None = None) -> Iterator[int]:
        """Greedy tokens after `prompt_ids`, one at a time, KV cache kept across steps."""
        stop = {self.eos} if stop is None else set(stop)
        self.llm.reset()
        self.llm.eval(list(prompt_ids))
        for _ in range(max_new_tokens):
            nxt = self._next()
            if nxt in stop:
                return
            yield nxt
            self.llm.eval([nxt])

    def time_prompt(self, ids: list[int]) -> float:
        """Seconds to process `ids` as a prompt (fresh cache)."""
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(list(ids))
        return time.perf_counter() - t

    def time_decode(self, prompt_ids: list[int], n: int) -> float:
        """Seconds for `n` single-token greedy steps after `prompt_ids` (prompt time excluded)."""
        self.llm.reset()
        self.llm.eval(list(prompt_ids))
        t = time.perf_counter()
        for _ in range(n):
            nxt = self._next()
            self.llm.eval([nxt])
        return time.perf_counter() - t

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close() if hasattr(llm, "close") else None

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
