"""A plain, independent statement of the Hopscotch layer per family, used as the tests' reference.

Validated against the stock transformers layer at all-ones scales (engine/test_families.py), then used to check the
patched layers at arbitrary scales and skip sets.
"""

from __future__ import annotations

import torch


def branches(family: str, layer, kw: dict):
    """(A, M): the attention and MLP branch of `layer`, as written in the family's modeling file."""

    def attn(h):
        return layer.self_attn(hidden_states=h, **kw)[0]

    if family in ("llama", "mistral", "qwen2", "qwen3", "phi3"):
        return (lambda x: attn(layer.input_layernorm(x)),
                lambda x: layer.mlp(layer.post_attention_layernorm(x)))
    if family == "granite":
        m = layer.residual_multiplier
        return (lambda x: attn(layer.input_layernorm(x)) * m,
                lambda x: layer.mlp(layer.post_attention_layernorm(x)) * m)
    if family in ("gemma2", "gemma3_text"):
        return (lambda x: layer.post_attention_layernorm(attn(layer.input_layernorm(x))),
                lambda x: layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x))))
    if family == "olmo2":
        return (lambda x: layer.post_attention_layernorm(attn(x)),
                lambda x: layer.post_feedforward_layernorm(layer.mlp(x)))
    raise KeyError(family)


def reference_layer(family: str, layer, x: torch.Tensor, kw: dict, scales, skipped: bool,
                    channels=None) -> torch.Tensor:
    """The layer's output; `channels` ([2, C], granularity "channel"): b_att and b_mlp multiplied per channel."""
    b_att, s_att, b_mlp, s_mlp = (float(v) for v in scales)
    if channels is not None:
        b_att, b_mlp = b_att * channels[0], b_mlp * channels[1]
    A, M = branches(family, layer, kw)
    x1 = s_att * x if skipped else b_att * A(x) + s_att * x
    return b_mlp * M(x1) + s_mlp * x1


def capture_layers(model, ids):
    """Run `model` on ids; return per layer (input hidden, kwargs, output hidden)."""
    layers = model.get_decoder().layers
    records: list[dict] = [{} for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        def pre(mod, args, kwargs, i=i):
            records[i]["x"] = args[0] if args else kwargs["hidden_states"]
            records[i]["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

        def post(mod, args, kwargs, out, i=i):
            records[i]["out"] = out[0] if isinstance(out, tuple) else out

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return records
