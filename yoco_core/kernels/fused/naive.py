"""Plain-PyTorch references of the fused kernels: what the models run on the CPU (and in training,
where autograd is needed), and what the Triton kernels are tested against.

Each rounds to the model dtype where the unfused model did (bf16 products, the RMSNorm output
before its weight), so the fused kernels, which compute in float32 and round at the same points,
agree with these to within a unit in the last place of the dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(x, weight, eps: float):
    """RMSNorm over the last dim, times ``weight`` unless it is None."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else weight * y


def rope_ref(x, cos, sin, n_first: int | None = None, n_plain: int = 0):
    """Rotary embedding (rotate-half layout) of ``x`` ``[B, n, H, D]`` with ``cos`` / ``sin``
    ``[n, R]``: the first ``R`` dims of each head rotate (``R < D``: partial rotary, as Phi's
    ``partial_rotary_factor``), the rest pass through. With ``n_first``: the heads are two groups
    (queries then keys, as a fused projection lays them out), returned as two contiguous tensors
    ``[B, n, n_first, D]`` and ``[B, n, H - n_first, D]``. With ``n_plain`` (needs ``n_first``): the
    last ``n_plain`` heads (values, next in the projection) are not rotated, only returned as a
    third contiguous tensor."""
    if n_plain and n_first is None:
        raise ValueError("n_plain needs n_first")
    H = x.shape[2] - n_plain
    plain, x = x[:, :, H:].contiguous(), x[:, :, :H]
    R = cos.shape[-1]
    x, rest = (x, None) if R == x.shape[-1] else (x[..., :R], x[..., R:])
    x1, x2 = x.chunk(2, dim=-1)
    out = x * cos[:, None, :] + torch.cat((-x2, x1), dim=-1) * sin[:, None, :]
    if rest is not None:
        out = torch.cat((out, rest), dim=-1)
    if n_first is None:
        return out
    q, k = out[:, :, :n_first].contiguous(), out[:, :, n_first:].contiguous()
    return (q, k, plain) if n_plain else (q, k)


def silu_mul_ref(gu):
    """SwiGLU's activation: ``silu(gate) * up`` for ``gu = [gate | up]`` along the last dim."""
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


def head_norm_gate_ref(o, g, eps: float):
    """Gated retention's output: each head of ``o`` ``[B, n, H, D]`` RMS-normed (no weight), times
    ``silu(g)`` (``g`` ``[B, n, H * D]``): ``[B, n, H * D]``."""
    B, n, H, D = o.shape
    return F.silu(g) * rms_norm_ref(o, None, eps).reshape(B, n, H * D)


def gret_decode_ref(p, cos, sin, state, n_heads: int, scale: float, normalizer: float, eps: float,
                    state_out=None):
    """One gated-retention decoding step from the fused projection ``p`` ``[B, 1, 4 d + H]``
    (q | k | v | output gate | decay logits): RoPE on q and k, the decay
    ``logsigmoid(gt) / normalizer``, the recurrent update of ``state`` ``[B, H, D, D]`` (float32),
    the per-head norm and the output gate. Returns ``(out [B, 1, d], new_state)``; the new state is
    written into ``state_out`` when given (it may be ``state`` itself: an in-place step)."""
    from ..gret.chunk import gret_step

    B, _, W = p.shape
    H = n_heads
    d = (W - H) // 4
    D = d // H
    q, k = rope_ref(p[..., : 2 * d].view(B, 1, 2 * H, D), cos, sin, n_first=H)
    v = p[..., 2 * d: 3 * d].view(B, 1, H, D)
    g = F.logsigmoid(p[..., 4 * d:].float()) / normalizer
    o, new = gret_step(q, k, v, g, scale, state)
    if state_out is not None:
        state_out.copy_(new)
        new = state_out
    return head_norm_gate_ref(o, p[..., 3 * d: 4 * d], eps), new


def merge_attention_ref(o1, l1, o2, l2, out=None):
    """Two attentions ``[B, H, n, D]`` of the same queries over disjoint keys, with their
    natural-log log-sum-exps ``[B, H, n]``, merged: ``(o1 e^l1 + o2 e^l2) / (e^l1 + e^l2)``,
    computed in float32 (written into ``out`` if given)."""
    m = torch.maximum(l1, l2)
    w1, w2 = (l1 - m).exp()[..., None].float(), (l2 - m).exp()[..., None].float()
    merged = ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(o1.dtype)
    if out is None:
        return merged
    out.copy_(merged)
    return out


E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)      # 448
FP8_TINY = 1e-12                             # a row of zeros gets this scale (its q is all zeros)
# 1/448 rounded to float32. A scale is the row's largest magnitude times it: a product is rounded alike on
# every device, while ``amax / 448`` is not (PyTorch on CUDA divides by a Python number as a multiply by
# its float32 reciprocal; the CPU and Triton's ``div_rn`` divide), so the fused kernel's scales could
# not equal this reference's on the GPU (every width failed on the H200, 2026-12-02).
E4M3_INV_MAX = float(torch.tensor(1.0) / E4M3_MAX)


def quantize_rows_ref(x):
    """``x`` (..., K) as float8 e4m3 ``q`` and a float32 scale per row ``s`` (..., 1), ``x ~= q * s``:
    ``s = max|row| * E4M3_INV_MAX`` (the row's largest element at the top of e4m3; at least
    ``FP8_TINY``), ``q = round_to_nearest_even(row / s)`` (a division by a tensor: IEEE-rounded on
    every device), clamped to +-448."""
    x = x.float()
    s = (x.abs().amax(dim=-1, keepdim=True) * E4M3_INV_MAX).clamp_min(FP8_TINY)
    return (x / s).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), s
