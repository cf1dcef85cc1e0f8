"""flash-linear-attention YOCO (``fla.models.yoco``, ``model_type: yoco``) into ``YOCO``.

FLA's gated retention and its global KV / cross-attention rotate interleaved RoPE pairs (rows
permuted, ``remap``); an SWA self-decoder (``fla.layers.attn.Attention``) is rotate-half already.
The token embeddings are multiplied by ``sqrt(hidden)``: kept as ``ModelConfig.embed_scale``.
``rope_inv_freq: yoco`` (angles ``1 / theta ** linspace(0, 1, d/2)``) is ``rope_scaling={"rope_type":
"yoco"}``.

Refused (one-line ``CheckpointError``): a ``gated_deltanet`` self-decoder, an unequal self/cross
layer split, attention residuals (``attnres_block_size``), ``qk_norm``, q/k/v biases, a windowed
cross-decoder, SWA with GQA, different RoPE settings for the self- and cross-decoder.
"""
from __future__ import annotations

import math

from ..state import CheckpointError
from ..config import ModelConfig
from .remap import Table

TAG = "fla"
PREFIXES = ()

# both decoders name their norms, SwiGLU and o_proj as we do; the global KV is the shared_kv_builder
_SHARED = {
    "model.embeddings.weight": "embed.weight",
    "model.self_layers.{}.attn_norm.weight": "self_layers.{}.attn_norm.weight",
    "model.self_layers.{}.attn.o_proj.weight": "self_layers.{}.attn.o_proj.weight",
    "model.self_layers.{}.mlp_norm.weight": "self_layers.{}.mlp_norm.weight",
    "model.self_layers.{}.mlp.gate_proj.weight": "self_layers.{}.mlp.gate_proj.weight",
    "model.self_layers.{}.mlp.up_proj.weight": "self_layers.{}.mlp.up_proj.weight",
    "model.self_layers.{}.mlp.down_proj.weight": "self_layers.{}.mlp.down_proj.weight",
    "model.self_layers.{}.attn.q_proj.weight": "self_layers.{}.attn.q_proj.weight",
    "model.self_layers.{}.attn.k_proj.weight": "self_layers.{}.attn.k_proj.weight",
    "model.self_layers.{}.attn.v_proj.weight": "self_layers.{}.attn.v_proj.weight",
    "model.shared_kv_builder.kv_norm.weight": "kv_norm.weight",
    "model.shared_kv_builder.k_proj.weight": "k_proj.weight",
    "model.shared_kv_builder.v_proj.weight": "v_proj.weight",
    "model.cross_layers.{}.attn_norm.weight": "cross_layers.{}.attn_norm.weight",
    "model.cross_layers.{}.attn.q_proj.weight": "cross_layers.{}.attn.q_proj.weight",
    "model.cross_layers.{}.attn.o_proj.weight": "cross_layers.{}.attn.o_proj.weight",
    "model.cross_layers.{}.mlp_norm.weight": "cross_layers.{}.mlp_norm.weight",
    "model.cross_layers.{}.mlp.gate_proj.weight": "cross_layers.{}.mlp.gate_proj.weight",
    "model.cross_layers.{}.mlp.up_proj.weight": "cross_layers.{}.mlp.up_proj.weight",
    "model.cross_layers.{}.mlp.down_proj.weight": "cross_layers.{}.mlp.down_proj.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_CROSS_ROPE = {"k_proj.weight": "head_dim", "cross_layers.{}.attn.q_proj.weight": "head_dim"}

SWA = Table(_SHARED, rope=_CROSS_ROPE)
GRET = Table(   # YOCOGatedRetention: interleaved RoPE, an output gate, per-head decay logits (gk)
    {**_SHARED,
     "model.self_layers.{}.attn.g_proj.weight": "self_layers.{}.attn.g_proj.weight",
     "model.self_layers.{}.attn.gk_proj.weight": "self_layers.{}.attn.gt_proj.weight"},
    rope={**_CROSS_ROPE, "self_layers.{}.attn.q_proj.weight": "self_head_dim",
          "self_layers.{}.attn.k_proj.weight": "self_head_dim"})


def fla_yoco_config(hf: dict, source: str, name: str = "fla-yoco") -> ModelConfig:
    """Our config for an FLA ``YOCOConfig`` dict (``ffn_dim`` from ``intermediate_size``, which FLA
    may leave unset: ``finish`` reads it off the weights)."""
    sd = dict(hf.get("self_decoder_attn") or {})
    cd = dict(hf.get("cross_decoder_attn") or {})
    kind = sd.get("type", "gated_deltanet")
    if kind not in ("gated_retention", "swa"):
        raise CheckpointError(f"{source}: FLA YOCO self-decoder {kind!r} is not supported (gated_retention or swa)")
    if hf.get("attnres_block_size") is not None:
        raise CheckpointError(f"{source}: attention residuals (attnres_block_size) are not supported")
    if cd.get("qk_norm") or cd.get("qkv_bias") or sd.get("qkv_bias") or sd.get("qk_norm"):
        raise CheckpointError(f"{source}: qk_norm / qkv_bias are not supported")
    if cd.get("window_size") is not None:
        raise CheckpointError(f"{source}: a windowed cross-decoder is not supported")
    if hf.get("hidden_act", "swish") not in ("swish", "silu"):
        raise CheckpointError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported")
    dim = int(hf.get("hidden_size", 2048))
    n_total = int(hf.get("num_hidden_layers", 21))
    n_self = int(hf.get("num_self_decoder_layers", 10))
    if n_total != 2 * n_self:
        raise CheckpointError(f"{source}: {n_self} self-decoder and {n_total - n_self} cross-decoder layers; "
                              "our YOCO needs an equal split")
    self_heads = int(sd.get("num_heads", 6))
    heads = int(cd.get("num_heads", 32))
    kv_heads = int(cd.get("num_kv_heads") or heads)
    if kind == "swa" and int(sd.get("num_v_heads") or self_heads) != self_heads:
        raise CheckpointError(f"{source}: SWA self-decoder with grouped KV heads is not supported")
    sd_theta, cd_theta = float(sd.get("rope_theta", 10000.0)), float(cd.get("rope_theta", 10000.0))
    sd_freq = "fla" if kind == "swa" else sd.get("rope_inv_freq", "fla")
    cd_freq = cd.get("rope_inv_freq", "fla")
    if sd_theta != cd_theta or sd_freq != cd_freq:
        raise CheckpointError(f"{source}: self- and cross-decoder RoPE differ (theta {sd_theta:g}/{cd_theta:g}, "
                              f"angles {sd_freq}/{cd_freq}); our YOCO uses one RoPE")
    scaling = None
    if cd_freq == "yoco":
        scaling = {"rope_type": "yoco"}
    try:
        cfg = ModelConfig(
            name=name, arch="yoco", self_decoder="gret" if kind == "gated_retention" else "swa",
            vocab_size=int(hf.get("vocab_size", 32000)), dim=dim, n_layers=n_total, n_heads=heads,
            n_kv_heads=kv_heads, n_self_heads=self_heads, ffn_dim=int(hf.get("intermediate_size") or 1),
            window=int(sd.get("window_size") or 1024), rope_theta=cd_theta, rope_scaling=scaling,
            norm_eps=float(hf.get("norm_eps", 1e-6)),
            gate_logit_normalizer=float(sd.get("gate_logit_normalizer", 16.0)),
            max_seq_len=1 << 20, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            embed_scale=math.sqrt(dim),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cfg


config_map = fla_yoco_config    # every refusal; needs no weights


def finish(cfg: ModelConfig, state: dict, source: str) -> tuple[ModelConfig, Table]:
    """The FFN width read off the weights (FLA may leave ``intermediate_size`` unset), and the table."""
    gate = state.get("model.self_layers.0.mlp.gate_proj.weight")
    if gate is None:
        raise CheckpointError(f"{source}: missing tensor model.self_layers.0.mlp.gate_proj.weight")
    cfg = cfg.replace(ffn_dim=int(gate.shape[0]))
    return cfg, GRET if cfg.self_decoder == "gret" else SWA
