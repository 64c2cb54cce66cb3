"""Side-by-side decoding (compare.stream_pair) against plain greedy decoding of the same model, in one process.

    .venv/bin/python bench/bench_pair.py                          # the default model, CPU, this process's threads
    python bench/bench_pair.py --random --device cuda --dtype bfloat16     # SmolLM2-shaped random weights (GPU box)
    .venv/bin/python bench/bench_pair.py --smoke                  # the smallest setting (CI): seconds

Per round, alternating: plain decoding of `--tokens` tokens with the KV cache (one sequence), then stream_pair with
the example run's 7 blocks skipped in each parallel mode ("threads": one thread per side; "batch": both sides as
one batched forward). Tokens/s counts decoded tokens after the first (prefill excluded); medians over rounds;
ratio = a side's tokens/s over plain's (goal: >= 0.8). `--random` builds the model from SmolLM2-135M's config with
random weights (speed only; no files needed), and a byte-level stand-in tokenizer, so EOS never stops a side early.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchargs import smoke, smoke_flag, smoke_model_dir  # noqa: E402
from hopscotch_core.engine.cache import cache_kwarg  # noqa: E402
from hopscotch_core.studio import compare  # noqa: E402

SKIP = [3, 6, 7, 9, 25, 28, 29]
PROMPT = "Explain in two sentences why the sky is blue."


class Bytes:
    """A stand-in tokenizer for random weights: bytes as ids, no chat template, no EOS."""

    eos_token_id = None
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(text.encode())}

    def encode(self, text, add_special_tokens=True):
        return list(text.encode())


def random_model(device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, eos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def plain(model, ids: list[int], n: int) -> float:
    dev = model.device
    kw = cache_kwarg(model.forward)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=dev), use_cache=True, logits_to_keep=1)
        cache, nxt = getattr(out, kw), out.logits[:, -1].argmax(-1).view(1, 1)
        int(nxt)
        t = time.perf_counter()
        for _ in range(n - 1):
            out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kw: cache})
            cache, nxt = getattr(out, kw), out.logits[:, -1].argmax(-1).view(1, 1)
            int(nxt)  # greedy decoding needs the token on the host each step, as stream_pair does
        return (n - 1) / (time.perf_counter() - t)


def pair(model, tok, n: int, parallel: str, chat: bool) -> float:
    t = None
    a: list[int] = []
    for i, (a, _b) in enumerate(compare.stream_pair(model, tok, PROMPT, SKIP, None, max_new_tokens=n, chat=chat,
                                                    lock=threading.Lock(), parallel=parallel)):
        if i == 0:
            t = time.perf_counter()
    if len(a) < 2:
        raise SystemExit(f"the original side ended after {len(a)} tokens: use another prompt")
    return (len(a) - 1) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--random", action="store_true", help="SmolLM2-shaped random weights instead of the default model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default="threads,batch")
    smoke_flag(ap, "a tiny random model with the embedded model's tokenizer, 6 tokens, one round")
    args = smoke(ap.parse_args(), tokens=6, rounds=1, random=False)
    dtype = getattr(torch, args.dtype)
    if args.random:
        model, tok = random_model(args.device, dtype), Bytes()
    else:
        import hopscotch_core as hc

        model, tok = hc.load_model(smoke_model_dir() if args.smoke else "default", device=args.device, dtype=dtype)
    from hopscotch_core.method.data import encode_prompt

    chat = not args.random
    ids = encode_prompt(tok, PROMPT, chat)
    modes = args.modes.split(",")
    got: dict[str, list[float]] = {"plain": [], **{m: [] for m in modes}}
    for r in range(args.rounds + 1):  # the first round warms up
        got["plain"].append(plain(model, ids, args.tokens))
        for m in modes:
            got[m].append(pair(model, tok, args.tokens, m, chat))
    med = {k: statistics.median(v[1:]) for k, v in got.items()}
    dev = torch.cuda.get_device_name() if model.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{dev}, {args.dtype}, {args.tokens} tokens, medians of {args.rounds} rounds")
    print("| decoding | tokens/s per sequence (min-max) | x plain |\n|---|---|---|")
    for k, v in got.items():
        print(f"| {k if k == 'plain' else 'stream_pair ' + k} | {med[k]:.1f} ({min(v[1:]):.1f}-{max(v[1:]):.1f}) | "
              f"{med[k] / med['plain']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
