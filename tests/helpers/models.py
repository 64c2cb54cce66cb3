"""Tiny random models of every supported family, built from configs (offline, ~1 s each), and small data helpers.

Add a family: one entry in FAMILY_CONFIGS. Every shared family test (formula, cache matrix, compaction,
artifacts) then runs on it.
"""

from __future__ import annotations

import torch
import transformers
from transformers import LlamaModel

from hopscotch_core.engine.cache import cache_kwarg
from hopscotch_core.method import data

N_LAYERS = 4
VOCAB = 101
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)
_ALTERNATE = ["sliding_attention", "full_attention"] * (N_LAYERS // 2)

# family -> (config class, extra kwargs). Sliding windows of 8 are shorter than the cache tests' sequences.
FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 8, "head_dim": 8}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "granite": ("GraniteConfig", {"residual_multiplier": 0.7, "embedding_multiplier": 2.0,
                                  "attention_multiplier": 0.3, "logits_scaling": 1.5}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "sliding_window": 8, "layer_types": _ALTERNATE,
                                "attn_implementation": "eager"}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": 8, "layer_types": _ALTERNATE}),
    "phi3": ("Phi3Config", {}),
    "olmo2": ("Olmo2Config", {}),
}
FAMILIES = list(FAMILY_CONFIGS)


def make_config(family: str, **overrides):
    cls_name, extra = FAMILY_CONFIGS[family]
    kwargs = {**_COMMON, **extra, **overrides}
    attn = kwargs.pop("attn_implementation", None)
    cfg = getattr(transformers, cls_name)(**kwargs)
    if attn:
        cfg._attn_implementation = attn
    return cfg


def make_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random causal LM of `family`, eval mode; norms get random weights so folding is exercised."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(make_config(family, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) * 0.5 + (0.75 if family not in ("gemma2", "gemma3_text") else -0.25))
    return model.to(dtype).eval()


def make_tokenizer():
    """A character-level fast tokenizer whose ids fit the tiny models' vocabulary (offline, no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,?!+-*=:'\n" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


CACHE_KW = cache_kwarg(LlamaModel.forward)
PROMPT = 12  # prompt length of left_padded_batch


def stepwise_logits(model, ids, mask=None, prompt: int = PROMPT):
    """Prefill `prompt` tokens, then feed the rest one token at a time through one DynamicCache:
    (logits [B, T, V] of every position, the cache)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    m = (lambda t: None) if mask is None else (lambda t: mask[:, :t])
    out = [model(ids[:, :prompt], attention_mask=m(prompt), use_cache=True, **{CACHE_KW: cache}).logits]
    for t in range(prompt, ids.shape[1]):
        out.append(model(ids[:, t:t + 1], attention_mask=m(t + 1), use_cache=True, **{CACHE_KW: cache}).logits)
    return torch.cat(out, dim=1), cache


def decoding_floor(model, ids, mask=None, prompt: int = PROMPT) -> float:
    """This machine's rounding floor of `stepwise_logits` against one full forward, on `model` as it is now
    (call it with nothing skipped): what any skip set's comparison is measured against (helpers/numerics.py)."""
    from helpers.numerics import max_abs_diff

    with torch.no_grad():
        steps, _ = stepwise_logits(model, ids, mask, prompt)
        full = model(ids, attention_mask=mask, use_cache=False).logits
    real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    return max_abs_diff(steps[real], full[real])


def left_padded_batch():
    torch.manual_seed(3)
    ids = torch.randint(3, 101, (3, PROMPT))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    ids[mask == 0] = 0
    return ids, mask


def examples(n_list, seed=0):
    torch.manual_seed(seed)
    out = []
    for n in n_list:
        ids = torch.randint(3, 101, (n,)).tolist()
        p = n // 2
        out.append(data.Example(ids, [-100] * p + ids[p:]))
    return out


PROMPTS = ["what is 1 plus 2?", "hi", "name three colours please", "2*3=", "ok", "a longer prompt with words"]


def check_compact_roundtrip(small, ref, tmp_path, ids, logits) -> None:
    """A compact model computes `ref` on ids, and so does its saved and reloaded copy (hc.load_model)."""
    import hopscotch_core as hc

    torch.testing.assert_close(logits(small, ids), ref, atol=1e-5, rtol=1e-5)
    hc.save_model(small, tmp_path / "c", tokenizer=make_tokenizer())
    again, _ = hc.load_model(tmp_path / "c", device="cpu")
    torch.testing.assert_close(logits(again, ids), ref, atol=1e-5, rtol=1e-5)


def random_deltas(hs, rank=3, seed=0, size=0.05):
    """Low-rank deltas of the handle's shape with random A and B (B nonzero, so they change the model); sets the
    handle's rank."""
    g = torch.Generator().manual_seed(seed)
    hs.set_lora_rank(rank)
    return {k: size * torch.randn(v.shape, generator=g) for k, v in hs.lora_state().items()}
