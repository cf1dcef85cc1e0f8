"""RoPE inverse frequencies, plain or with LLaMA-3 frequency scaling (for converted Llama models)."""
from __future__ import annotations

import math

import torch


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None, device=None) -> torch.Tensor:
    freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    if not scaling:
        return freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return freq
    if kind == "yoco":  # official YOCO (microsoft/unilm) and FLA's rope_inv_freq="yoco"
        return 1.0 / theta ** torch.linspace(0, 1, head_dim // 2, device=device, dtype=torch.float32)
    if kind != "llama3":
        raise ValueError(f"unsupported rope scaling {kind!r} (supported: llama3, yoco)")
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_mid, mid, scaled)
