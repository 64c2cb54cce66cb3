"""Greedy text generation with a temporary skip set, for demos (CLI `ask`, the app's side-by-side view).

`generate_text` applies the skip set only for the duration of the call and restores the model afterwards; pass a
`threading.Lock` when the same model object is shared between threads (the app's cached model), so that one
caller's skip set never leaks into another's generation.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable

import torch

from .scaling import attach, handle_of


def encode_prompt(tok, text: str, chat: bool = True) -> list[int]:
    """The prompt's token ids: in the chat template (with the generation prompt) when `chat` and the tokenizer has
    one, else the plain text. The one encoding of prompts for generation, the run data and the app."""
    if chat and getattr(tok, "chat_template", None):
        return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False))
    return list(tok(text)["input_ids"])


def eos_ids(model, tok) -> set[int]:
    """Every end-of-sequence id of the model's generation config and of the tokenizer: where an answer ends, for
    generate_text, the run data's answers (method/data.py) and the side-by-side decode (studio/compare.py)."""
    ids: set[int] = set()
    for v in (getattr(model.generation_config, "eos_token_id", None), getattr(tok, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def generate_text(
    model,
    tok,
    prompt: str,
    skipped: Iterable[int] = (),
    scales: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    lock: threading.Lock | None = None,
) -> str:
    """Greedy answer to `prompt` with `skipped` attention blocks (and optional [L, 4] scales) applied.

    With neither, the model runs as it is (a compact model included) and nothing is attached.
    """
    ids = torch.tensor([encode_prompt(tok, prompt, chat)], device=model.device)  # (1, T): the tokens data.py uses
    skipped = list(skipped)
    with lock or contextlib.nullcontext():
        if handle_of(model) is not None:
            raise RuntimeError("generate_text needs a model without an attached Hopscotch handle")
        with attach(model) if (skipped or scales is not None) else contextlib.nullcontext() as hs:
            if hs is not None:
                if scales is not None:
                    hs.set_scales(scales)
                hs.skip(skipped)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                     eos_token_id=sorted(eos_ids(model, tok)) or None)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
