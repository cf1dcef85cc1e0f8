"""RoPE inverse frequencies and cos/sin factors, equal to transformers' initialisation for each of
its scalings (default, linear, dynamic NTK, yarn, longrope, llama3) plus official YOCO's angles;
and ``hf_rope``, which reads a Hugging Face config.json's RoPE settings into ours.

Our scaling dict (``ModelConfig.rope_scaling``; None is plain RoPE) is self-contained and JSON-safe:
``rope_type`` and every number the math needs, transformers' defaults filled in by ``hf_rope``:

- ``linear``: factor. ``dynamic``: factor, max_position_embeddings.
- ``llama3``: factor, original_max_position_embeddings, low_freq_factor (1), high_freq_factor (4).
- ``yarn``: factor, original_max_position_embeddings, beta_fast (32), beta_slow (1), truncate
  (true), and where given attention_factor, mscale, mscale_all_dim.
- ``longrope``: short_factor, long_factor (rotary dim / 2 numbers each),
  original_max_position_embeddings, factor, and where given attention_factor.
- ``yoco``: nothing (official YOCO / FLA: ``1 / theta ** linspace(0, 1, d/2)``).

Two scalings depend on the forward step's ``seq_len`` (its largest position + 1):

- longrope: the long factors when seq_len > original_max_position_embeddings, else the short ones,
  as transformers' ``longrope_frequency_update`` picks them.
- dynamic: the original frequencies while seq_len <= max_position_embeddings (the equal length
  included), else the base grown to ``theta * (factor * seq_len / L - (factor - 1)) ** (d / (d-2))``:
  what a fresh transformers model computes as it runs through one sequence monotonically (prefill,
  then decode steps). Transformers' ``dynamic_frequency_update`` is stateful: it keeps the longest
  length seen (``max_seq_len_cached``) across calls and resets only for a call shorter than L, so a
  reused transformers model that once ran 3L positions keeps the 3L base for a later call of length
  L..3L; we compute every step's frequencies from its own length alone.
"""
from __future__ import annotations

import functools
import math

import torch

# rope_type -> (required keys, optional keys with their defaults), of OUR dict
_OURS = {
    "default": ((), {}),
    "yoco": ((), {}),
    "linear": (("factor",), {}),
    "dynamic": (("factor", "max_position_embeddings"), {}),
    "llama3": (("factor", "original_max_position_embeddings"), {"low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    "yarn": (("factor", "original_max_position_embeddings"),
             {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True, "attention_factor": None, "mscale": None,
              "mscale_all_dim": None}),
    "longrope": (("short_factor", "long_factor", "original_max_position_embeddings", "factor"),
                 {"attention_factor": None}),
}
_LENGTH_DEPENDENT = ("dynamic", "longrope")


def _read(scaling: dict | None) -> tuple[str, dict]:
    """(rope_type, every parameter, defaults filled in) of our scaling dict; a ValueError naming
    an unknown rope_type, an unknown key or a missing one."""
    if not scaling:
        return "default", {}
    if not isinstance(scaling, dict):
        raise TypeError(f"a rope scaling is a dict, not {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    if kind not in _OURS:
        raise ValueError(f"unsupported rope_type {kind!r} (supported: {', '.join(_OURS)})")
    required, optional = _OURS[kind]
    unknown = sorted(set(scaling) - {"rope_type", "type", *required, *optional})
    if unknown:
        raise ValueError(f"rope_type {kind!r} has no key {unknown[0]!r}")
    missing = [k for k in required if scaling.get(k) is None]
    if missing:
        raise ValueError(f"rope_type {kind!r} needs {missing[0]!r}")
    return kind, {**optional, **{k: v for k, v in scaling.items() if v is not None}}


def depends_on_length(scaling: dict | None) -> bool:
    """Whether the frequencies change with the forward step's length (dynamic, longrope)."""
    return _read(scaling)[0] in _LENGTH_DEPENDENT


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None, device=None, seq_len=None,
             dtype=torch.float32) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` of a rotary dim ``head_dim`` (the rotated part of a
    head), as transformers initialises them for ``scaling`` (``seq_len=None``) or recomputes them
    for a forward step of length ``seq_len`` (an int, or an integer device tensor of one element:
    then no host sync, so a CUDA graph can capture it). Only dynamic and longrope use seq_len."""
    kind, p = _read(scaling)
    if device is None and isinstance(seq_len, torch.Tensor) and kind in _LENGTH_DEPENDENT:
        device = seq_len.device
    if kind == "yoco":
        return 1.0 / theta ** torch.linspace(0, 1, head_dim // 2, device=device, dtype=dtype)
    if kind == "longrope":
        return _longrope(head_dim, theta, p, device, dtype, seq_len)
    freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    if kind == "linear":
        return freq / float(p["factor"])
    if kind == "llama3":
        return _llama3(freq, p)
    if kind == "yarn":
        return _yarn(freq, head_dim, theta, p)
    if kind == "dynamic" and seq_len is not None:
        return _dynamic(freq, head_dim, theta, p, seq_len)
    return freq


def attention_scaling(head_dim: int, theta: float, scaling: dict | None) -> float:
    """The factor transformers multiplies cos and sin by: yarn's and longrope's attention factor
    (given, or the one their papers suggest), 1.0 for the others. It never depends on the length
    (transformers' longrope update changes only the frequencies), nor on ``head_dim`` / ``theta``
    (kept for the callers' symmetry with ``inv_freq``)."""
    kind, p = _read(scaling)
    if kind not in ("yarn", "longrope"):
        return 1.0
    if p["attention_factor"] is not None:
        return float(p["attention_factor"])
    factor = float(p["factor"])
    if kind == "longrope":
        original = p["original_max_position_embeddings"]
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    if p["mscale"] and p["mscale_all_dim"]:
        return _yarn_mscale(factor, p["mscale"]) / _yarn_mscale(factor, p["mscale_all_dim"])
    return _yarn_mscale(factor)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _length(seq_len, device) -> torch.Tensor:
    """``seq_len`` as a 0-d integer tensor on ``device`` without a host sync (an int becomes a
    device fill, not a copy from host memory)."""
    if isinstance(seq_len, torch.Tensor):
        if seq_len.numel() != 1 or seq_len.dtype.is_floating_point or seq_len.dtype == torch.bool:
            raise ValueError(f"seq_len must be an int or a one-element integer tensor, not {seq_len.dtype} "
                             f"{tuple(seq_len.shape)}")
        return seq_len.reshape(())
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise TypeError(f"seq_len must be an int or an integer tensor, not {type(seq_len).__name__}")
    return torch.full((), seq_len, dtype=torch.int64, device=device)


def _llama3(freq: torch.Tensor, p: dict) -> torch.Tensor:
    """LLaMA 3.1: long wavelengths divided by factor, short ones kept, a smooth blend between."""
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_len = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_mid, mid, scaled)


def _yarn(freq: torch.Tensor, dim: int, theta: float, p: dict) -> torch.Tensor:
    """YaRN: the dims that turn more than beta_fast times over the original length keep their
    frequency, those under beta_slow turns are divided by factor, a linear ramp between."""
    length = p["original_max_position_embeddings"]

    def dim_of(turns):  # the (fractional) dim index that turns `turns` times over `length` positions
        return dim * math.log(length / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(p["beta_fast"] or 32), dim_of(p["beta_slow"] or 1)  # transformers' `or` defaults
    if p["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    ramp = ((torch.arange(dim // 2, device=freq.device, dtype=freq.dtype) - low) / (high - low)).clamp(0, 1)
    return freq / float(p["factor"]) * ramp + freq * (1 - ramp)


def _dynamic(freq: torch.Tensor, dim: int, theta: float, p: dict, seq_len) -> torch.Tensor:
    """Dynamic NTK: past max_position_embeddings the base grows with the length (module docstring)."""
    if dim <= 2:
        raise ValueError(f"dynamic RoPE needs a rotary dim above 2, not {dim}")
    factor, original = float(p["factor"]), p["max_position_embeddings"]
    n = _length(seq_len, freq.device)
    base = theta * (factor * n.to(freq.dtype) / original - (factor - 1)) ** (dim / (dim - 2))
    grown = 1.0 / base ** (torch.arange(0, dim, 2, device=freq.device, dtype=freq.dtype) / dim)
    return torch.where(n > original, grown, freq)


def _longrope(dim: int, theta: float, p: dict, device, dtype, seq_len) -> torch.Tensor:
    """LongRoPE: each frequency divided by its own factor, the short or the long list by length."""
    for key in ("short_factor", "long_factor"):
        if not isinstance(p[key], (list, tuple)) or len(p[key]) != dim // 2:
            raise ValueError(f"longrope {key} must list {dim // 2} numbers (rotary dim {dim}), not {p[key]!r}")
    pos = theta ** (torch.arange(0, dim, 2, device=device, dtype=dtype) / dim)
    short = 1.0 / (_factors(tuple(p["short_factor"]), device, dtype) * pos)
    if seq_len is None:
        return short
    long = 1.0 / (_factors(tuple(p["long_factor"]), device, dtype) * pos)
    return torch.where(_length(seq_len, device) > p["original_max_position_embeddings"], long, short)


@functools.cache
def _factors(values: tuple, device, dtype) -> torch.Tensor:
    """A factor list as a tensor on ``device``, made once: a copy from host memory cannot run
    inside a CUDA graph capture, so the eager warm-up step makes it and the capture reuses it
    (kept for the process's life, as the graph needs its memory)."""
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device)


# -- Hugging Face config.json -> ours ------------------------------------------------------------
# rope_type -> the keys transformers' validation knows for it (with _HF_COMMON)
_HF_KEYS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings", "attention_factor", "factor"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
}
_HF_COMMON = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
_GEMMA3 = ("gemma3", "gemma3_text")                 # 1e6 global / 1e4 local default bases
_TOP_LEVEL_ORIGINAL = ("phi3", "phi4_multimodal")   # their top-level original_max_position_embeddings wins
_LAYER_TYPES = ("full_attention", "sliding_attention")


def hf_rope(hf: dict, source: str, head_dim: int, layer_type: str | None = None) -> tuple[float, dict | None, int]:
    """(theta, our scaling dict or None for plain RoPE, rotary dim) of a transformers config.json
    dict (flat, or its text_config), for the layers of ``layer_type`` where the config has per-layer-
    type RoPE (Gemma 3: "full_attention" / "sliding_attention"). Takes ``rope_parameters``
    (transformers 5) or ``rope_scaling`` + ``rope_theta`` (4.x). A ValueError ``{source}: ...``
    naming the key refuses what would change the math and is not handled here."""
    r = _HFRope(hf, source, head_dim, layer_type)
    kind = r.params.get("rope_type") or r.params.get("type") or "default"
    if kind in ("su", "yarn") and hf.get("model_type") == "phi3":
        kind = "longrope"  # Phi-3's old names for its LongRoPE (transformers maps them so too)
    if kind not in _HF_KEYS:
        r.fail(f"rope_type {kind!r} is not supported (supported: {', '.join(_HF_KEYS)})")
    unknown = sorted(set(r.params) - {*_HF_COMMON, *_HF_KEYS[kind]})
    if unknown:
        r.fail(f"rope parameter {unknown[0]!r} is not understood for rope_type {kind!r}")
    theta = r.number("rope_theta", r.theta)
    scaling = None if kind == "default" else {"rope_type": kind, **_FROM_HF[kind](r)}
    return theta, scaling, r.rotary


class _HFRope:
    """One layer type's RoPE parameters of a config.json, read with one-line errors naming the key."""

    def __init__(self, hf: dict, source: str, head_dim: int, layer_type: str | None):
        self.hf, self.source = hf, source
        local = "rope_local_base_freq" in hf or hf.get("model_type") in _GEMMA3
        params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        if not isinstance(params, dict):
            self.fail(f"rope parameters must be a dict, not {params!r}")
        labels = {*(hf.get("layer_types") or ()), *_LAYER_TYPES}
        self.nested = any(k in labels for k in params)
        if self.nested:
            params = self._of_layer_type(params, labels, layer_type)
        elif layer_type == "sliding_attention" and local:
            params = {}  # Gemma 3's windowed layers: plain RoPE on their own base
        self.params = params
        if layer_type == "sliding_attention" and local:
            self.theta = hf.get("rope_local_base_freq", 10000.0)
        else:
            self.theta = hf.get("rope_theta", 1e6 if hf.get("model_type") in _GEMMA3 else 10000.0)
        self.rotary = self._rotary_dim(head_dim)

    def fail(self, what: str):
        raise ValueError(f"{self.source}: {what}")

    def _of_layer_type(self, params: dict, labels: set, layer_type: str | None) -> dict:
        others = sorted(k for k in params if k not in labels)
        if others:
            self.fail(f"rope_parameters key {others[0]!r} is neither a layer type nor understood")
        if layer_type is None:
            self.fail(f"rope_parameters are per layer type ({', '.join(params)}): say which layer_type")
        if layer_type not in params:
            self.fail(f"rope_parameters have no {layer_type!r} entry (they have {', '.join(params)})")
        if not isinstance(params[layer_type], dict):
            self.fail(f"rope_parameters[{layer_type!r}] is {params[layer_type]!r}: "
                      "layers without RoPE are not supported")
        return params[layer_type]

    def _rotary_dim(self, head_dim: int) -> int:
        factor = self.params.get("partial_rotary_factor", self.hf.get("partial_rotary_factor"))
        if factor is None:
            dim = head_dim
        elif isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            self.fail(f"partial_rotary_factor must be a number in (0, 1], not {factor!r}")
        else:
            dim = int(head_dim * factor)
        if dim <= 0 or dim % 2:
            self.fail(f"the rotary dim {dim} (head dim {head_dim}, partial_rotary_factor {factor}) "
                      "must be even and positive")
        return dim

    def number(self, key: str, default=None, required: bool = False) -> float | None:
        """The parameter ``key`` as a float (``default`` where absent or null)."""
        value = self.params.get(key)
        if value is None:
            if required:
                self.fail(f"rope parameter {key!r} is missing")
            value = default
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"rope parameter {key!r} must be a number, not {value!r}")
        return float(value)

    def numbers(self, key: str, n: int) -> list[float]:
        value = self.params.get(key)
        if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
            self.fail(f"rope parameter {key!r} must be a list of numbers, not {value!r}")
        if len(value) != n:
            self.fail(f"rope parameter {key!r} lists {len(value)} numbers; rotary dim {self.rotary} needs {n}")
        return [float(v) for v in value]

    def max_len(self) -> int:
        return self._count("max_position_embeddings", self.hf.get("max_position_embeddings"))

    def original(self) -> int:
        """The pretraining length: Phi-3's top-level value wins (a field of its config class),
        else the parameters' own, else max_position_embeddings (transformers' standardisation)."""
        key = "original_max_position_embeddings"
        if not self.nested and self.hf.get("model_type") in _TOP_LEVEL_ORIGINAL:
            return self._count(key, self.hf.get(key, 4096))
        return self._count(key, self.params[key]) if self.params.get(key) is not None else self.max_len()

    def _count(self, key: str, value) -> int:
        if value is None:
            self.fail(f"{key} is missing (the rope parameters need it)")
        if type(value) not in (int, float) or not float(value).is_integer() or value < 1:
            self.fail(f"{key} must be a positive integer, not {value!r}")
        return int(value)


def _from_hf_yarn(r: _HFRope) -> dict:
    original = r.original()
    factor = r.number("factor")
    truncate = r.params.get("truncate", True)
    if truncate is not None and not isinstance(truncate, bool):
        r.fail(f"rope parameter 'truncate' must be true or false, not {truncate!r}")
    out = {"factor": r.max_len() / original if factor is None else factor,
           "original_max_position_embeddings": original,
           "beta_fast": r.number("beta_fast") or 32.0, "beta_slow": r.number("beta_slow") or 1.0,
           "truncate": bool(truncate)}
    return {**out, **{k: r.number(k) for k in ("attention_factor", "mscale", "mscale_all_dim")
                      if r.params.get(k) is not None}}


def _from_hf_longrope(r: _HFRope) -> dict:
    original = r.original()
    factor = r.number("factor")
    out = {k: r.numbers(k, r.rotary // 2) for k in ("short_factor", "long_factor")}
    out.update(original_max_position_embeddings=original,
               factor=r.max_len() / original if factor is None else factor)
    if r.params.get("attention_factor") is not None:
        out["attention_factor"] = r.number("attention_factor")
    return out


_FROM_HF = {
    "linear": lambda r: {"factor": r.number("factor", required=True)},
    "dynamic": lambda r: {"factor": r.number("factor", required=True), "max_position_embeddings": r.max_len()},
    "llama3": lambda r: {"factor": r.number("factor", required=True),
                         "low_freq_factor": r.number("low_freq_factor", required=True),
                         "high_freq_factor": r.number("high_freq_factor", required=True),
                         "original_max_position_embeddings": r.original()},
    "yarn": _from_hf_yarn,
    "longrope": _from_hf_longrope,
}
