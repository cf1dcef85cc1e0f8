"""Plain-PyTorch reference for single-token decode attention over a preallocated KV buffer.

Shapes: q ``[B, H, D]`` (the one new query token of each row), k / v ``[B, H_kv, C, D]`` with ``C``
the buffer's capacity, of which positions ``[0, length)`` are filled. ``H`` is a multiple of
``H_kv`` (grouped-query attention: query head ``h`` reads KV head ``h // (H // H_kv)``).
The query is the newest position, so every filled key is visible: no causal mask.
``supports_head_dim`` (the head sizes the split-KV kernel tiles) lives here too, so that asking it
imports no triton.
"""
from __future__ import annotations

import torch


def supports_head_dim(d: int) -> bool:
    """The head sizes the split-KV kernel tiles: a power of two from 16 to 256."""
    return 16 <= d <= 256 and d & (d - 1) == 0


def _lengths(length, B: int, C: int, device) -> torch.Tensor:
    """``length`` (int, 0-d, [1] or [B] integer tensor) as a [B] int64 tensor on ``device``."""
    if isinstance(length, torch.Tensor):
        lens = length.reshape(-1).to(device=device, dtype=torch.int64)
        if lens.numel() == 1:
            lens = lens.expand(B)
        if lens.numel() != B:
            raise ValueError(f"length has {lens.numel()} entries for a batch of {B}")
    else:
        lens = torch.full((B,), int(length), dtype=torch.int64, device=device)
    return lens.clamp(max=C)


def decode_attention_ref(q, k, v, length, dtype=torch.float32, *, scale: float | None = None, window: int = 0,
                         softcap: float = 0.0):
    """softmax(q k^T * scale) v over positions ``[0, length)`` of each row (``window`` > 0: only
    the last ``window`` of them; ``softcap`` > 0: logits ``softcap * tanh(logits / softcap)``),
    computed in ``dtype`` (float32, or float64 for the tests' reference); returns ``[B, H, D]`` in
    q's dtype. ``scale`` None: ``D ** -0.5``.

    Positions outside the attended range are never used, whatever they hold (NaN included)."""
    B, H, D = q.shape
    Bk, H_kv, C, Dk = k.shape
    if Bk != B or Dk != D or v.shape != k.shape or H % H_kv:
        raise ValueError(f"bad shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    G = H // H_kv
    lens = _lengths(length, B, C, q.device)
    out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    for b in range(B):  # a reference: one row at a time, each sliced to its own length
        L = int(lens[b])
        lo = max(0, L - window) if window else 0
        kb = k[b, :, lo:L].to(dtype)                                # [H_kv, L - lo, D]
        vb = v[b, :, lo:L].to(dtype)
        qb = q[b].to(dtype).reshape(H_kv, G, D)                     # heads of a group are adjacent
        s = qb @ kb.transpose(-1, -2) * (D ** -0.5 if scale is None else scale)   # [H_kv, G, L - lo]
        if softcap:
            s = torch.tanh(s / softcap) * softcap
        out[b] = (s.softmax(-1) @ vb).reshape(H, D).to(q.dtype)
    return out
