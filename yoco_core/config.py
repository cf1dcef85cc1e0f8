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
        if self.dim % self.n_heads or self.dim % self.n_self_heads:
            problems.append("dim must be divisible by n_heads and n_self_heads")
        if self.n_heads % self.n_kv_heads:
            problems.append("n_heads must be a multiple of n_kv_heads")
        if self.arch == "yoco" and self.n_layers % 2:
            problems.append("a YOCO model needs an even n_layers (half self-, half cross-decoder)")
        if (self.dim // self.n_heads) % 2 or (self.dim // self.n_self_heads) % 2:
            problems.append("head dims must be even for RoPE")
        if self.cross_logn < 0 or self.cross_logn == 1:
            problems.append(f"cross_logn must be 0 (off) or a length >= 2, not {self.cross_logn!r}")
        if self.rope_scaling:
            from .rope import inv_freq

            try:
                inv_freq(2, self.rope_theta, self.rope_scaling)
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"bad rope_scaling {self.rope_scaling}: {e!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

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
            layer = 2 * d * d + 2 * d * kv + ffn + 2 * d
            return emb + self.n_layers * layer + d
        half = self.n_layers // 2
        if self.self_decoder == "gret":
            mixer = 5 * d * d + d * self.n_self_heads
        else:
            mixer = 4 * d * d
        self_layer = mixer + ffn + 2 * d
        cross_layer = 2 * d * d + ffn + 2 * d
        return emb + half * (self_layer + cross_layer) + 2 * d * kv + d + d


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
            dict: "an object", type(None): "null"}[typing.get_origin(hint) or hint]


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
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and dict in typing.get_args(hint):
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
_register(ModelConfig(name="yoco-swa-tiny", arch="yoco", self_decoder="swa", window=256, **_TINY_CROSS, **_TINY))
_register(ModelConfig(name="transformer-tiny", arch="transformer", **_TINY))

SIZES = tuple(_PAPER_SIZES) + ("tiny",)


def get_config(name: str) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        import difflib

        close = difflib.get_close_matches(key, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown preset {name!r}{hint}")
    return dataclasses.replace(PRESETS[key])
