"""The official YOCO checkpoints (microsoft/unilm, ``YOCO/``) into ``YOCO``.

A folder with ``params.json`` (``YOCOArgs``: dim, n_layers, hidden_dim, n_self_heads, n_attn_heads,
n_attn_kv_heads, vocab_size, rope_theta, norm_eps, sliding_window) and one state dict. Every mixer
rotates interleaved RoPE pairs (q/k rows permuted, ``remap``); the embeddings are scaled by
``sqrt(dim)`` (``ModelConfig.embed_scale``); the RoPE angles are ``1 / theta ** linspace(0, 1, d/2)``
(``rope_scaling={"rope_type": "yoco"}``). Their ``swiglu(fc1(x), gate(x)) = silu(fc1 x) * gate x``:
``fc1`` is our ``gate_proj``, their ``gate`` our ``up_proj``. No ``output_projection``: tied.
"""
from __future__ import annotations

import math

from ..state import CheckpointError
from ..config import ModelConfig
from .remap import Table

TAG = "unilm"
PREFIXES = ("decoder.model.", "model.", "decoder.")

_SHARED = {
    "embed_tokens.weight": "embed.weight",
    "self_decoder.layers.{}.mixer_layer_norm.weight": "self_layers.{}.attn_norm.weight",
    "self_decoder.layers.{}.mixer.q_proj.weight": "self_layers.{}.attn.q_proj.weight",
    "self_decoder.layers.{}.mixer.k_proj.weight": "self_layers.{}.attn.k_proj.weight",
    "self_decoder.layers.{}.mixer.v_proj.weight": "self_layers.{}.attn.v_proj.weight",
    "self_decoder.layers.{}.mixer.out_proj.weight": "self_layers.{}.attn.o_proj.weight",
    "self_decoder.layers.{}.final_layer_norm.weight": "self_layers.{}.mlp_norm.weight",
    "self_decoder.layers.{}.ffn.fc1.weight": "self_layers.{}.mlp.gate_proj.weight",
    "self_decoder.layers.{}.ffn.gate.weight": "self_layers.{}.mlp.up_proj.weight",
    "self_decoder.layers.{}.ffn.fc2.weight": "self_layers.{}.mlp.down_proj.weight",
    "cross_decoder.kv_layer_norm.weight": "kv_norm.weight",
    "cross_decoder.k_proj.weight": "k_proj.weight",
    "cross_decoder.v_proj.weight": "v_proj.weight",
    "cross_decoder.layers.{}.mixer_layer_norm.weight": "cross_layers.{}.attn_norm.weight",
    "cross_decoder.layers.{}.mixer.q_proj.weight": "cross_layers.{}.attn.q_proj.weight",
    "cross_decoder.layers.{}.mixer.out_proj.weight": "cross_layers.{}.attn.o_proj.weight",
    "cross_decoder.layers.{}.final_layer_norm.weight": "cross_layers.{}.mlp_norm.weight",
    "cross_decoder.layers.{}.ffn.fc1.weight": "cross_layers.{}.mlp.gate_proj.weight",
    "cross_decoder.layers.{}.ffn.gate.weight": "cross_layers.{}.mlp.up_proj.weight",
    "cross_decoder.layers.{}.ffn.fc2.weight": "cross_layers.{}.mlp.down_proj.weight",
    "layer_norm.weight": "norm.weight",
    "output_projection.weight": "lm_head.weight",
}
_ROPE = {"self_layers.{}.attn.q_proj.weight": "self_head_dim", "self_layers.{}.attn.k_proj.weight": "self_head_dim",
         "k_proj.weight": "head_dim", "cross_layers.{}.attn.q_proj.weight": "head_dim"}

SWA = Table(_SHARED, rope=_ROPE)
GRET = Table({**_SHARED,     # gated retention: an output gate and per-head decay logits
              "self_decoder.layers.{}.mixer.g_proj.weight": "self_layers.{}.attn.g_proj.weight",
              "self_decoder.layers.{}.mixer.gt_proj.weight": "self_layers.{}.attn.gt_proj.weight"}, rope=_ROPE)


def unilm_config(params: dict, source: str, name: str = "unilm-yoco", vocab: int = 1,
                 tied: bool = False) -> ModelConfig:
    """Our config for a ``params.json``; the vocabulary size and tying are the weights' (``finish``:
    ``vocab`` and ``tied`` stand in until then)."""
    try:
        dim, layers = int(params["dim"]), int(params["n_layers"])
        heads = int(params["n_attn_heads"])
        cfg = ModelConfig(
            name=name, arch="yoco", self_decoder="swa" if params.get("sliding_window") else "gret",
            vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads,
            n_kv_heads=int(params.get("n_attn_kv_heads") or heads),
            n_self_heads=int(params["n_self_heads"]), ffn_dim=int(params["hidden_dim"]),
            window=int(params.get("sliding_window") or 1024),
            rope_theta=float(params.get("rope_theta", 10000.0)), rope_scaling={"rope_type": "yoco"},
            norm_eps=float(params.get("norm_eps", 1e-5)), gate_logit_normalizer=16.0,
            max_seq_len=1 << 20, tie_embeddings=tied, embed_scale=math.sqrt(dim),
        )
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: params.json lacks {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cfg


config_map = unilm_config     # the refusals (params.json lacks a key, impossible values); no weights needed


def finish(cfg: ModelConfig, state: dict, source: str) -> tuple[ModelConfig, Table]:
    """The vocabulary size and tying read off the weights, and the table."""
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{source}: missing tensor embed_tokens.weight")
    try:
        cfg = cfg.replace(vocab_size=int(state["embed_tokens.weight"].shape[0]),
                          tie_embeddings="output_projection.weight" not in state)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cfg, GRET if cfg.self_decoder == "gret" else SWA
