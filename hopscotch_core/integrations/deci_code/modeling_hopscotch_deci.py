"""A Llama-layer causal LM whose layers may lack attention or MLP, on stock transformers' Llama modules.

Written by Hopscotch Studio's `deci` export beside config.json (NVIDIA's Nemotron-NAS / DeciLM layout, see the
configuration file). Load it with

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

A layer whose attention is a no-op has no attention weights, computes no attention and keeps no KV cache: the
attention layers take consecutive cache slots, so the cache holds one entry per layer that attends. A no-op MLP is
likewise absent. Everything else (embeddings, RoPE, masks, generation) is transformers' own Llama code.
"""

import copy
import inspect

from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import (
    LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel, LlamaPreTrainedModel, LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration_hopscotch_deci import HopscotchDeciConfig


class DeciLMDecoderLayer(LlamaDecoderLayer):
    """x + Attn(norm(x)) then x + MLP(norm(x)), either part absent where its block config is a no-op."""

    def __init__(self, config, layer_idx, cache_idx):
        nn.Module.__init__(self)  # the parts are built below, only those that exist
        self.gradient_checkpointing = False
        self.hidden_size = config.hidden_size
        kv_heads, width = config.layer_sizes(layer_idx)
        self.self_attn = self.input_layernorm = self.mlp = self.post_attention_layernorm = None
        if kv_heads is not None:
            attn = LlamaAttention(config, layer_idx=cache_idx)  # its KV cache slot among the attending layers
            if kv_heads != attn.k_proj.out_features // attn.head_dim:
                attn.num_key_value_groups = config.num_attention_heads // kv_heads
                attn.k_proj = nn.Linear(config.hidden_size, kv_heads * attn.head_dim, bias=config.attention_bias)
                attn.v_proj = nn.Linear(config.hidden_size, kv_heads * attn.head_dim, bias=config.attention_bias)
            if config.qkv_bias:
                for name in ("q_proj", "k_proj", "v_proj"):
                    old = getattr(attn, name)
                    setattr(attn, name, nn.Linear(old.in_features, old.out_features, bias=True))
            self.self_attn = attn
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if width is not None:
            mlp_config = config
            if width != config.intermediate_size:
                mlp_config = copy.copy(config)
                mlp_config.intermediate_size = width
            self.mlp = LlamaMLP(mlp_config)
            self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, **kwargs):
        if self.self_attn is not None:
            out, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            hidden_states = hidden_states + out
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(LlamaPreTrainedModel):
    config_class = HopscotchDeciConfig
    _no_split_modules = ["DeciLMDecoderLayer"]


# transformers renamed the cache argument (past_key_values -> cache); take whichever this version's Llama reads
_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


class DeciLMModel(DeciLMPreTrainedModel, LlamaModel):
    def __init__(self, config):
        DeciLMPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        attending = config.attention_layers()
        slot = {layer: i for i, layer in enumerate(attending)}
        self.layers = nn.ModuleList(
            [DeciLMDecoderLayer(config, i, slot.get(i)) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.attention_layer_count = len(attending)
        self.post_init()

    def forward(self, *args, **kwargs):
        cache = kwargs.get(_CACHE_ARG, kwargs.get("past_key_values"))
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = self.config.use_cache
        if cache is None and use_cache:
            cache = DynamicCache()  # grows one entry per attending layer
            kwargs.pop("past_key_values", None)
            kwargs[_CACHE_ARG] = cache
        if isinstance(cache, DynamicCache):
            self._trim(cache)
        return LlamaModel.forward(self, *args, **kwargs)

    def _trim(self, cache):
        """A cache made from the config (as generate() makes it) has a slot per layer; keep one per attending
        layer, dropping only slots that never held anything."""
        extra = cache.layers[self.attention_layer_count:]
        if extra and not any(getattr(layer, "is_initialized", False) for layer in extra):
            del cache.layers[self.attention_layer_count:]


class DeciLMForCausalLM(DeciLMPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config):
        DeciLMPreTrainedModel.__init__(self, config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["DeciLMForCausalLM", "DeciLMModel", "DeciLMPreTrainedModel"]
