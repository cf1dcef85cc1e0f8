"""The LLaMA lineage of Hugging Face decoders into our ``Transformer``, weight for weight: they
name their tensors alike (``hf_common.LLAMA_NAMES``) and use the rotate-half RoPE layout (no row
permutation). What each adds:

* ``llama``: ``attention_bias`` (q/k/v and o), ``mlp_bias``, an explicit ``head_dim``;
* ``mistral``: ``sliding_window`` on every layer (null: full attention);
* ``qwen2``: q/k/v biases always; sliding layers where transformers puts them (``layer_types``,
  else ``use_sliding_window`` with the layers from ``max_window_layers`` on);
* ``qwen3``: per-head q/k RMSNorm before RoPE, ``attention_bias``, its sliding layers as qwen2's.

The RoPE scalings (default, linear, dynamic, yarn, longrope, llama3) are ``rope.hf_rope``'s; any
key that would change the math and is not read here is refused (``hf_common.check_keys``).
"""
from __future__ import annotations

import warnings

from ..config import ModelConfig
from ..errors import Notice
from .hf_common import LLAMA_NAMES, Family, decoder_config, table_finish, uniform_windows, windows_from_layer_types
from .remap import Table

TABLE = Table(LLAMA_NAMES)      # a plain LLaMA's (no biases, no q/k norms)


def llama_config(hf: dict, source: str, name: str = "hf-llama") -> ModelConfig:
    bias = bool(hf.get("attention_bias", False))
    return decoder_config(hf, source, name, "llama", frozenset({"attention_bias", "mlp_bias"}),
                          qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))


def mistral_config(hf: dict, source: str, name: str = "hf-mistral") -> ModelConfig:
    return decoder_config(hf, source, name, "mistral", frozenset({"sliding_window"}),
                          layer_windows=uniform_windows(hf))


def _qwen_windows(hf: dict, source: str) -> list | None:
    """transformers' rule: ``layer_types`` when given, else sliding from ``max_window_layers`` on
    when ``use_sliding_window`` (the window is null otherwise)."""
    layers = int(hf.get("num_hidden_layers") or 0)
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    if hf.get("layer_types"):
        return windows_from_layer_types(hf, layers, window, source)
    if window is None:
        return None
    first = int(hf["max_window_layers"])
    windows = [int(window) if i >= first else 0 for i in range(layers)]
    return windows if any(windows) else None


_QWEN_READS = frozenset({"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"})


def _ignored_dual_chunk(hf: dict, source: str) -> dict:
    """Qwen2.5-1M's ``dual_chunk_attention_config`` is vLLM's: transformers runs plain attention
    (with the folder's RoPE), and so do we, saying so once."""
    if hf.get("dual_chunk_attention_config"):
        warnings.warn(f"{source}: dual_chunk_attention_config is not applied, as in transformers (vLLM's "
                      "dual-chunk attention); full attention with the folder's RoPE runs", Notice)
    return {k: v for k, v in hf.items() if k != "dual_chunk_attention_config"}


def qwen2_config(hf: dict, source: str, name: str = "hf-qwen2") -> ModelConfig:
    hf = _ignored_dual_chunk(hf, source)
    return decoder_config(hf, source, name, "qwen2", _QWEN_READS, qkv_bias=True,
                          layer_windows=_qwen_windows(hf, source))


def qwen3_config(hf: dict, source: str, name: str = "hf-qwen3") -> ModelConfig:
    hf = _ignored_dual_chunk(hf, source)
    bias = bool(hf.get("attention_bias", False))
    return decoder_config(hf, source, name, "qwen3", _QWEN_READS | {"attention_bias"}, qkv_bias=bias,
                          o_bias=bias, qk_norm=True, layer_windows=_qwen_windows(hf, source))


# transformers' config-class defaults for keys a config.json may leave out (transformers 5.24)
_BASE = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False)
LLAMA_DEFAULTS = dict(_BASE, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, max_position_embeddings=2048, attention_bias=False, mlp_bias=False)
MISTRAL_DEFAULTS = dict(_BASE, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                        sliding_window=4096)
QWEN2_DEFAULTS = dict(_BASE, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
                      sliding_window=4096, use_sliding_window=False, max_window_layers=28)
QWEN3_DEFAULTS = dict(QWEN2_DEFAULTS, head_dim=128, attention_bias=False)

_finish = table_finish(LLAMA_NAMES)
LLAMA = Family("hf", llama_config, _finish, LLAMA_DEFAULTS)
MISTRAL = Family("hf", mistral_config, _finish, MISTRAL_DEFAULTS)
QWEN2 = Family("hf", qwen2_config, _finish, QWEN2_DEFAULTS)
QWEN3 = Family("hf", qwen3_config, _finish, QWEN3_DEFAULTS)
