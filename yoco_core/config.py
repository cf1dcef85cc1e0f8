"""Model configuration and the named presets.

One dataclass describes both architectures:

* ``arch="yoco"``: a self-decoder of ``n_layers // 2`` layers (gated retention, ``gret``, or
  sliding-window attention, ``swa``), one KV projection that writes the single global KV cache,
  then ``n_layers // 2`` cross-decoder layers that attend that cache.
* ``arch="transformer"``: ``n_layers`` ordinary causal GQA self-attention layers.

The paper sizes (arXiv 2405.05254, Table 7 and Section 4) come with a ``transformer-*`` twin of the
same width, depth, heads, KV heads and FFN, so the two can be profiled against each other.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Literal

from .tokenizer import check_name as _check_tokenizer


@dataclass
class ModelConfig:
    name: str = "custom"
    arch: Literal["yoco", "transformer"] = "yoco"
    self_decoder: Literal["gret", "swa"] = "gret"
    vocab_size: int = 512
    dim: int = 256
    n_layers: int = 8
    n_heads: int = 4           # query heads of every attention layer (cross-decoder, transformer)
    n_kv_heads: int = 2        # KV heads of the global cache / the transformer's GQA
    n_self_heads: int = 0      # heads of the gRet / SWA self-decoder (0: same as n_heads)
    ffn_dim: int = 768
    window: int = 1024         # SWA window (keys a query sees, itself included)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None   # None, or LLaMA-3 style {"rope_type": "llama3", ...}
    cross_rope: bool = True    # RoPE on the global keys and cross-decoder queries
    cross_logn: int = 0        # > 0: cross-decoder queries at position p scaled by max(1, ln(p+1) / ln(this))
    norm_eps: float = 1e-5
    gate_logit_normalizer: float = 16.0
    max_seq_len: int = 1 << 21
    tie_embeddings: bool = False
    embed_scale: float = 1.0   # token embeddings times this (sqrt(dim) in FLA / official YOCO)
    tokenizer: str = "bytes"   # "bytes", or "folder": the tokenizer files beside config.json (tokenizer.py)
    # -- what converted Hugging Face families need (arch="transformer"; the defaults are LLaMA's) ---
    head_size: int = 0         # attention head size (0: dim // n_heads; Qwen3 and Gemma set their own)
    qkv_bias: bool = False     # biases on q / k / v (Qwen2, LLaMA's attention_bias)
    o_bias: bool = False       # a bias on the attention output projection (LLaMA's attention_bias)
    mlp_bias: bool = False     # biases on the gated MLP's three projections (LLaMA's mlp_bias)
    mlp_act: Literal["silu", "gelu_tanh"] = "silu"   # the gated MLP's activation (Gemma: gelu_tanh)
    qk_norm: bool = False      # RMSNorm of each query and key head before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False   # RMSNorm of the attention and MLP outputs before the residual add (Gemma 2/3)
    attn_scale: float = 0.0    # attention logit scale (0: head_size ** -0.5; Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float = 0.0  # > 0: attention logits -> cap * tanh(logits / cap) (Gemma 2)
    logit_softcap: float = 0.0  # > 0: the same on the output logits (Gemma 2)
    rope_dim: int = 0          # rotated dims of each head, the first ones (0: all; Phi's partial_rotary_factor)
    layer_windows: list | None = None   # per layer: 0 full causal attention, w > 0 a sliding window of w keys
    local_rope_theta: float = 0.0       # > 0: windowed layers' own RoPE base (Gemma 3), with local_rope_scaling
    local_rope_scaling: dict | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):          # every value of its annotated type first
            value = getattr(self, f.name)
            if why := field_problem(f.name, value):
                raise ValueError(why)
            if _hints()[f.name] is float:
                setattr(self, f.name, float(value))     # an int where a float is meant: 10000 -> 10000.0
        if self.n_self_heads == 0:
            self.n_self_heads = self.n_heads
        for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "n_self_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be a positive integer, not {getattr(self, k)!r}")
        problems = []
        if self.self_decoder == "swa" and self.window < 2:
            problems.append(f"window must be at least 2 (keys a query sees, itself included), not {self.window}")
        if why := _check_tokenizer(self.tokenizer):
            problems.append(why)
        if (not self.head_size and self.dim % self.n_heads) or self.dim % self.n_self_heads:
            problems.append("dim must be divisible by n_heads (unless head_size is set) and n_self_heads")
        if self.n_heads % self.n_kv_heads:
            problems.append("n_heads must be a multiple of n_kv_heads")
        if self.arch == "yoco" and self.n_layers % 2:
            problems.append("a YOCO model needs an even n_layers (half self-, half cross-decoder)")
        if self.head_dim % 2 or self.self_head_dim % 2 or self.rotary_dim % 2:
            problems.append("head dims (and rope_dim) must be even for RoPE")
        problems += self._attention_problems()
        if self.cross_logn < 0 or self.cross_logn == 1:
            problems.append(f"cross_logn must be 0 (off) or a length >= 2, not {self.cross_logn!r}")
        for key in ("rope_scaling", "local_rope_scaling"):
            if getattr(self, key):
                from .rope import inv_freq

                try:
                    inv_freq(self.rotary_dim, self.rope_theta, getattr(self, key))
                except (KeyError, TypeError, ValueError) as e:
                    problems.append(f"bad {key} {getattr(self, key)}: {e!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def _attention_problems(self) -> list[str]:
        """What is wrong with the converted-family fields (they are the Transformer's alone)."""
        out = []
        if self.head_size < 0 or self.rope_dim < 0 or self.rope_dim > self.head_dim:
            out.append(f"head_size and rope_dim must be >= 0, rope_dim at most the head size {self.head_dim}")
        if self.attn_scale < 0 or self.attn_softcap < 0 or self.logit_softcap < 0 or self.local_rope_theta < 0:
            out.append("attn_scale, attn_softcap, logit_softcap and local_rope_theta must be >= 0")
        w = self.layer_windows
        if w is not None and (len(w) != self.n_layers or not all(type(v) is int and (v == 0 or v >= 2) for v in w)):
            out.append(f"layer_windows must list {self.n_layers} integers, 0 (full) or a window >= 2, not {w!r}")
        hf_only = [f.name for f in dataclasses.fields(self)
                   if f.name in _TRANSFORMER_ONLY and getattr(self, f.name) != f.default]
        if self.arch == "yoco" and hf_only:
            out.append(f"{', '.join(hf_only)}: only for arch transformer (the converted Hugging Face families)")
        return out

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Rotated dims of each attention head (the first ones)."""
        return self.rope_dim or self.head_dim

    def window_of(self, layer: int) -> int:
        """Layer ``layer``'s sliding window (0: full causal attention)."""
        return self.layer_windows[layer] if self.layer_windows else 0

    @property
    def self_head_dim(self) -> int:
        return self.dim // self.n_self_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def n_params(self) -> int:
        """Analytic parameter count (equals ``sum(p.numel())`` of the built model)."""
        d, f, v = self.dim, self.ffn_dim, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        ffn = 3 * d * f
        emb = v * d * (1 if self.tie_embeddings else 2)
        if self.arch == "transformer":
            q = self.n_heads * self.head_dim
            layer = 2 * d * q + 2 * d * kv + ffn + 2 * d
            layer += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + (2 * f + d) * self.mlp_bias
            layer += 2 * self.head_dim * self.qk_norm + 2 * d * self.post_norms
            return emb + self.n_layers * layer + d
        half = self.n_layers // 2
        if self.self_decoder == "gret":
            mixer = 5 * d * d + d * self.n_self_heads
        else:
            mixer = 4 * d * d
        self_layer = mixer + ffn + 2 * d
        cross_layer = 2 * d * d + ffn + 2 * d
        return emb + half * (self_layer + cross_layer) + 2 * d * kv + d + d


_TRANSFORMER_ONLY = ("head_size", "qkv_bias", "o_bias", "mlp_bias", "mlp_act", "qk_norm", "post_norms",
                     "attn_scale", "attn_softcap", "logit_softcap", "rope_dim", "layer_windows",
                     "local_rope_theta", "local_rope_scaling")


# -- field types, from the annotations --------------------------------------------------------
@functools.cache
def _hints() -> dict:
    return typing.get_type_hints(ModelConfig)


def _expected(hint) -> str:
    """How an error message names a value of the type ``hint``."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            dict: "an object", list: "a list", type(None): "null"}[typing.get_origin(hint) or hint]


def _fits(value, hint) -> bool:
    """``value`` is of the type ``hint``: bools are bools, ints are ints (not bools), floats are
    finite numbers (ints too), a Literal one of its values, a union any of its members."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def field_problem(key: str, value) -> str | None:
    """None if ``value`` is of the type ``ModelConfig`` annotates ``key`` with, else the one-line
    refusal naming the key, e.g. ``config key cross_rope: expected true or false, not 'false'``."""
    hint = _hints()[key]
    return None if _fits(value, hint) else f"config key {key}: expected {_expected(hint)}, not {value!r}"


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def field_from_text(key: str, text: str):
    """The value a ``KEY=TEXT`` setting (``yoco train --set``) means for ``key``, read by its
    annotation (``false``, ``64``, ``5e5``, a JSON object, ``null``); text that does not read as
    that type comes back as it is, for ``field_problem`` to refuse."""
    hint, low = _hints()[key], text.strip().lower()
    try:
        if hint is bool:
            return True if low in _TRUE else False if low in _FALSE else text
        if hint is int:
            return int(low)
        if hint is float:
            return float(low)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and {dict, list} & set(typing.get_args(hint)):
            return None if low in ("none", "null", "") else json.loads(text)
    except ValueError:              # json.JSONDecodeError is a ValueError
        return text
    return text


def _ffn(dim: int) -> int:
    """SwiGLU width 8/3 * dim rounded up to a multiple of 256 (the LLaMA convention)."""
    return ((8 * dim // 3) + 255) // 256 * 256


# name -> (dim, layers, heads, kv heads, ffn); the paper's scaling sizes plus its 3B and 13B.
_PAPER_SIZES = {
    "160m": (768, 12, 12, 4, _ffn(768)),
    "400m": (1024, 24, 16, 4, _ffn(1024)),
    "830m": (1536, 24, 12, 4, _ffn(1536)),
    "1.4b": (2048, 24, 16, 4, _ffn(2048)),
    "2.7b": (2560, 32, 20, 4, _ffn(2560)),
    "3b": (3072, 26, 24, 8, 8192),
    "6.8b": (4096, 32, 32, 8, 11008),
    "13b": (5120, 40, 40, 8, 13824),
}

PRESETS: dict[str, ModelConfig] = {}


def _register(cfg: ModelConfig) -> None:
    PRESETS[cfg.name] = cfg


for _size, (_d, _l, _h, _kv, _f) in _PAPER_SIZES.items():
    for _arch in ("yoco", "transformer"):
        _register(ModelConfig(
            name=f"{_arch}-{_size}", arch=_arch, vocab_size=100288, dim=_d, n_layers=_l,
            n_heads=_h, n_kv_heads=_kv, ffn_dim=_f, max_seq_len=1 << 21,
        ))
    _register(ModelConfig(
        name=f"yoco-swa-{_size}", arch="yoco", self_decoder="swa", vocab_size=100288, dim=_d,
        n_layers=_l, n_heads=_h, n_kv_heads=_kv, ffn_dim=_f, max_seq_len=1 << 21,
    ))

# Tiny models: byte-level vocabulary (256 bytes + specials, padded to 320), a few million
# parameters; the embedded defaults and the CPU test models.
# The tiny YOCOs' cross-decoder has no RoPE (NoPE) and log-length query scaling from 512 keys on:
# retrieval then holds far past the training length (trained to 8K, measured to 1M; README).
_TINY = dict(vocab_size=320, dim=256, n_layers=8, n_heads=4, n_kv_heads=2, ffn_dim=768,
             max_seq_len=1 << 21)
_TINY_CROSS = dict(cross_rope=False, cross_logn=512)
_register(ModelConfig(name="yoco-tiny", arch="yoco", self_decoder="gret", **_TINY_CROSS, **_TINY))
# The SWA self-decoder and the Transformer have fewer attention weights than gated retention, so
# their MLPs are a little wider: all three within 0.6% of 6.79M parameters (a fair comparison).
_TINY_WIDER = {**_TINY, "ffn_dim": 816}
_register(ModelConfig(name="yoco-swa-tiny", arch="yoco", self_decoder="swa", window=256, **_TINY_CROSS, **_TINY_WIDER))
_register(ModelConfig(name="transformer-tiny", arch="transformer", **_TINY_WIDER))

SIZES = tuple(_PAPER_SIZES) + ("tiny",)


def get_config(name: str) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        import difflib

        close = difflib.get_close_matches(key, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown preset {name!r}{hint}")
    return dataclasses.replace(PRESETS[key])
