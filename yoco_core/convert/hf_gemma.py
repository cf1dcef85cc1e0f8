"""Hugging Face Gemma 2 and Gemma 3 text models (``gemma2``, ``gemma3_text``) into our ``Transformer``.

What they differ in from LLaMA, and where it lives here:

* RMSNorm ``x * (1 + w)``: their norm weights load as ``1 + w`` (``Table.plus_one``);
* token embeddings times ``sqrt(hidden)`` (rounded to the model's dtype): ``embed_scale``;
* a GELU-tanh gated MLP (``hidden_activation: gelu_pytorch_tanh``): ``mlp_act``;
* norms after attention and after the MLP too (``post_attention_layernorm``,
  ``post_feedforward_layernorm``; the MLP's input norm is ``pre_feedforward_layernorm``): ``post_norms``;
* the logit scale ``query_pre_attn_scalar ** -0.5``: ``attn_scale``; soft-capped attention
  logits (Gemma 2's ``attn_logit_softcapping``; Gemma 3's config may carry the key, which
  transformers never applies, nor do we, with a notice) and output logits (``final_logit_softcapping``);
* sliding and full layers alternating (``layer_types``; Gemma 2: every other one, Gemma 3: five
  sliding then one full) with ``sliding_window``;
* Gemma 3: per-head q/k norms (``(1 + w)`` too), and the sliding layers' own RoPE base
  (``rope_local_base_freq`` or the ``sliding_attention`` rope parameters): ``local_rope_theta``.
"""
from __future__ import annotations

import math
import warnings

from ..config import ModelConfig
from ..errors import Notice
from ..rope import hf_rope
from ..state import CheckpointError
from .hf_common import LLAMA_NAMES, Family, decoder_config, table_finish, windows_from_layer_types

NAMES = {**LLAMA_NAMES,
         "layers.{}.post_attention_layernorm.weight": "layers.{}.attn_post_norm.weight",
         "layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.weight",
         "layers.{}.post_feedforward_layernorm.weight": "layers.{}.mlp_post_norm.weight"}
PLUS_ONE = ("norm.weight",)      # every RMSNorm: attn_norm, mlp_norm, *_post_norm, q/k_norm, norm

_READS = frozenset("""hidden_activation query_pre_attn_scalar attn_logit_softcapping final_logit_softcapping
    sliding_window layer_types attention_bias use_bidirectional_attention sliding_window_pattern
    _sliding_window_pattern sliding_window_size""".split())
_ACTS = ("gelu_pytorch_tanh", "gelu_tanh")


def _gemma_config(hf: dict, source: str, name: str, family: str, pattern: int, **fields) -> ModelConfig:
    if hf.get("use_bidirectional_attention"):
        raise CheckpointError(f"{source}: use_bidirectional_attention=true is not supported (a causal decoder only)")
    layers, window = int(hf["num_hidden_layers"]), hf.get("sliding_window")
    if hf.get("sliding_window_size") not in (None, window):     # Gemma-2-9b's config says it twice
        raise CheckpointError(f"{source}: sliding_window_size {hf['sliding_window_size']!r} differs from "
                              f"sliding_window {window!r}")
    if not window:
        raise CheckpointError(f"{source}: config key sliding_window must be a window size, not {window!r}")
    if not hf.get("layer_types"):        # transformers' default pattern: `pattern - 1` sliding, then one full
        hf = {**hf, "layer_types": ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                    for i in range(layers)]}
    windows = windows_from_layer_types(hf, layers, window, source)
    dim = int(hf["hidden_size"])
    bias = bool(hf.get("attention_bias", False))
    attn_cap, logit_cap = hf.get("attn_logit_softcapping"), hf.get("final_logit_softcapping")
    return decoder_config(
        hf, source, name, family, _READS | set(fields.pop("reads", ())), act_key="hidden_activation", acts=_ACTS,
        mlp_act="gelu_tanh", post_norms=True, embed_scale=math.sqrt(dim),
        attn_scale=float(hf["query_pre_attn_scalar"]) ** -0.5, attn_softcap=float(attn_cap or 0.0),
        logit_softcap=float(logit_cap or 0.0), qkv_bias=bias, o_bias=bias, layer_windows=windows, **fields)


def gemma2_config(hf: dict, source: str, name: str = "hf-gemma2") -> ModelConfig:
    return _gemma_config(hf, source, name, "gemma2", 2)


def gemma3_config(hf: dict, source: str, name: str = "hf-gemma3") -> ModelConfig:
    if hf.get("attn_logit_softcapping"):     # transformers' Gemma 3 keeps the key and never applies it
        warnings.warn(f"{source}: attn_logit_softcapping={hf['attn_logit_softcapping']} is not applied, as in "
                      "transformers' Gemma 3 (it has q/k norms instead)", Notice)
        hf = {**hf, "attn_logit_softcapping": None}
    head_dim = int(hf["head_dim"])
    try:
        local_theta, local_scaling, _ = hf_rope(hf, source, head_dim, layer_type="sliding_attention")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return _gemma_config(hf, source, name, "gemma3_text", int(hf.get("sliding_window_pattern") or 6),
                         qk_norm=True, local_rope_theta=local_theta, local_rope_scaling=local_scaling,
                         reads=("rope_local_base_freq",), rope_layer="full_attention")


# transformers' config-class defaults for keys a config.json may leave out (transformers 5.24)
_BASE = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
             head_dim=256, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
             attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096)
GEMMA2_DEFAULTS = dict(_BASE, vocab_size=256000, max_position_embeddings=8192, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0)
GEMMA3_DEFAULTS = dict(_BASE, vocab_size=262208, max_position_embeddings=131072)
GEMMA2 = Family("hf", gemma2_config, table_finish(NAMES, PLUS_ONE), GEMMA2_DEFAULTS)
GEMMA3 = Family("hf", gemma3_config, table_finish(NAMES, PLUS_ONE), GEMMA3_DEFAULTS)
