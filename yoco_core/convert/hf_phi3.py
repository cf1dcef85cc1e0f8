"""Hugging Face Phi-3 / Phi-4 (``model_type: phi3``) into our ``Transformer``.

Phi-3 fuses q | k | v into ``qkv_proj`` and gate | up into ``gate_up_proj``, in the order our
fused matrices hold them, so they load as they are. It rotates only the first
``partial_rotary_factor`` of each head (Phi-4-mini), uses longrope for its 128K variants (short and
long factors switched on the sequence length, ``rope.py``) and a ``sliding_window`` on every layer
where its config sets one (Phi-3-mini-4k: 2047), all of which transformers applies and so do we.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..state import CheckpointError
from .hf_common import Family, decoder_config, table_finish, uniform_windows

NAMES = {
    "embed_tokens.weight": "embed.weight",
    "layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "layers.{}.self_attn.qkv_proj.weight": "layers.{}.attn.qkv.weight",
    "layers.{}.self_attn.o_proj.weight": "layers.{}.attn.o_proj.weight",
    "layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.weight",
    "layers.{}.mlp.gate_up_proj.weight": "layers.{}.mlp.gate_up.weight",
    "layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
    "norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def phi3_config(hf: dict, source: str, name: str = "hf-phi3") -> ModelConfig:
    for key in ("full_attn_mod", "interpolate_factor"):     # Phi-4-mini's; transformers reads neither
        if hf.get(key, 1) != 1:
            raise CheckpointError(f"{source}: config key {key}={hf[key]!r} is not supported (only 1, "
                                  "which transformers' Phi-3 assumes)")
    return decoder_config(hf, source, name, "phi3", frozenset({"sliding_window", "full_attn_mod", "interpolate_factor"}),
                          partial_rotary=True, layer_windows=uniform_windows(hf))


# transformers' config-class defaults for keys a config.json may leave out (transformers 5.24)
DEFAULTS = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
PHI3 = Family("hf", phi3_config, table_finish(NAMES), DEFAULTS)
