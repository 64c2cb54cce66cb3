"""Configuration of a Llama-layer model whose layers may lack attention or MLP (NVIDIA's Nemotron-NAS / DeciLM
layout, written by Hopscotch Studio's `deci` export).

config.json holds the usual Llama fields plus `block_configs`, one entry per layer:

    {"attention": {"no_op": bool, "replace_with_linear": false, "n_heads_in_group": int | null},
     "ffn":       {"no_op": bool, "replace_with_linear": false, "ffn_mult": float | null[, "intermediate_size": int]}}

`no_op` attention: the layer computes no attention and keeps no KV cache; `n_heads_in_group` is the number of query
heads per key/value head (KV heads = num_attention_heads // n_heads_in_group); the MLP width is derived from
`ffn_mult` as the serving engines do (`ffn_width`), or given as `intermediate_size` where no multiplier lands on it.
vLLM and SGLang read these fields with their own `nemotron_nas` model code; this file only gives them (and the
modeling file beside it) attribute access.
"""

from transformers import LlamaConfig


class _Fields(dict):
    """A dict whose keys read as attributes (block_config.attention.no_op), saved to JSON as a plain dict."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def ffn_width(ffn_mult: float, hidden_size: int) -> int:
    """The MLP width a DeciLM `ffn_mult` stands for: int(2 * ffn_mult * hidden / 3) rounded up to a multiple of 256."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


class HopscotchDeciConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, qkv_bias=False, **kwargs):
        self.block_configs = [_Fields({part: _Fields(fields or {}) for part, fields in dict(block).items()})
                              for block in (block_configs or [])]
        self.qkv_bias = bool(qkv_bias)  # q/k/v projections carry a bias, the output projection none (Qwen2)
        if kwargs.get("rope_parameters"):  # the legacy pair is written for other readers; this one is the truth
            kwargs.pop("rope_scaling", None)
            kwargs.pop("rope_theta", None)
        super().__init__(**kwargs)
        # Readers that predate transformers 5's rope_parameters look for rope_theta (rope_scaling reads
        # rope_parameters in transformers 5)
        rope = dict(getattr(self, "rope_parameters", None) or {})
        if "rope_theta" in rope:
            self.rope_theta = rope["rope_theta"]

    def attention_layers(self):
        """Indices of the layers that compute attention (and keep a KV cache)."""
        return [i for i, block in enumerate(self.block_configs) if not block.attention.no_op]

    def layer_sizes(self, i):
        """(KV heads, MLP width) of layer i; None for a part that is a no-op."""
        block = self.block_configs[i]
        kv = None if block.attention.no_op else self.num_attention_heads // block.attention.n_heads_in_group
        if block.ffn.no_op:
            width = None
        elif block.ffn.get("ffn_mult") is not None:
            width = ffn_width(block.ffn.ffn_mult, self.hidden_size)
        else:
            width = int(block.ffn.intermediate_size)
        return kv, width
