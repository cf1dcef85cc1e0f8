"""Hugging Face Llama (``model_type: llama``) into the ``Transformer`` baseline, weight for weight.

HF Llama already uses the rotate-half RoPE layout (no row permutation); LLaMA-3 ``rope_scaling``
maps onto ``config.rope_scaling``. Refused (one-line ``CheckpointError``): biases, a ``head_dim``
other than hidden / heads, a non-SiLU activation, rope scalings other than llama3.
"""
from __future__ import annotations

from ..state import CheckpointError
from ..config import ModelConfig
from .remap import Table

TAG = "hf"
PREFIXES = ("model.",)        # LlamaForCausalLM's names; a bare LlamaModel's have none

TABLE = Table({
    "embed_tokens.weight": "embed.weight",
    "layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "layers.{}.self_attn.o_proj.weight": "layers.{}.attn.o_proj.weight",
    "layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.weight",
    "layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
    "norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
})


def _rope_of(hf: dict, source: str) -> tuple[float, dict | None]:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or None
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if scaling is None and params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            return theta, None
        if kind != "llama3":
            raise CheckpointError(f"{source}: rope scaling {kind!r} is not supported (supported: llama3)")
        keep = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {k: scaling[k] for k in keep if k in scaling}
        scaling["rope_type"] = "llama3"
        return theta, scaling
    return theta, None


def llama_config(hf: dict, source: str, name: str = "hf-llama") -> ModelConfig:
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise CheckpointError(f"{source}: {key}=true is not supported (our Transformer has no biases)")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (only silu)")
    try:
        dim, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        layers, ffn, vocab = int(hf["num_hidden_layers"]), int(hf["intermediate_size"]), int(hf["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: config lacks {e}") from None
    kv = int(hf.get("num_key_value_heads") or heads)
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != dim:
        raise CheckpointError(f"{source}: head_dim {head_dim} differs from hidden_size / num_attention_heads "
                              f"= {dim // heads}; not supported")
    theta, scaling = _rope_of(hf, source)
    try:
        return ModelConfig(
            name=name, arch="transformer", vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads,
            n_kv_heads=kv, ffn_dim=ffn, rope_theta=theta, rope_scaling=scaling,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(hf.get("max_position_embeddings") or 1 << 20),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


config_map = llama_config     # every refusal and the whole config: the weights add nothing


def finish(cfg: ModelConfig, state: dict, source: str) -> tuple[ModelConfig, Table]:
    return cfg, TABLE
