"""The fused elementwise kernels in Triton (references in ``naive.py``).

Each reads its inputs once and writes its outputs once, computing in float32 and rounding to the
model dtype where the reference does. They replace chains of 5-30 small PyTorch kernels: at a
decoding step (one token) the launches, not the bytes, were the cost (a YOCO-3B step was 1409
kernels, 4.9 ms of GPU time for 2.3 ms of memory traffic); in prefill the float32 intermediates of
the unfused norms, RoPE and gates were 40% of a 16K chunk's time.

* ``rms_norm``: RMSNorm of a row.
* ``rope``: rotary embedding of the heads of a strided view (a slice of a fused projection),
  written as one or two contiguous tensors (queries, keys), and optionally the values beside them
  copied into a third (the contiguous q, k, v fla-core's gated retention takes, in one pass).
* ``silu_mul``: SwiGLU's ``silu(gate) * up`` from the fused gate/up projection.
* ``head_norm_gate``: gated retention's per-head RMSNorm times ``silu(gate)``.
* ``merge_attention``: two attentions of the same queries over disjoint keys merged by their
  log-sum-exp, written into the caller's output (a slice of the whole attention output): the
  chunked causal attention of long prefills (``kernels/attention.causal_with_prefix``).
* ``gret_decode``: a whole gated-retention decoding step per (row, head): RoPE on q and k, the
  decay, the state update (in place if asked), the read-out, the head norm and the gate.
* ``quantize_rows``: a row's largest magnitude, its float32 scale and the row in float8 e4m3 (the
  activations of an fp8 projection, ``yoco_core.quant``): one read of the row per pass (two passes
  when it is wider than a block) and a byte written per element, where the plain form made
  float32 copies, their absolute values, a quotient and a clamp (six passes over the activations).

Rows are addressed through a row stride, so slices of a fused projection's output are read where
they lie. Grids depend only on shapes, so every kernel can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import E4M3, E4M3_INV_MAX, E4M3_MAX, FP8_TINY

__all__ = ["rms_norm", "rope", "silu_mul", "head_norm_gate", "gret_decode", "merge_attention", "quantize_rows",
           "CALLS"]

CALLS = {"triton": 0}     # incremented on every launch: lets the tests prove the kernels ran


def _launched():
    CALLS["triton"] += 1


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``x`` (last dim contiguous, leading dims collapsible) as (x, row count, row stride)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    R = x.numel() // x.shape[-1] if x.numel() else 0
    stride = x.stride(-2) if x.dim() > 1 else x.shape[-1]
    for i in range(x.dim() - 2):          # leading dims must step like one flat row index
        if x.shape[i] > 1 and x.stride(i) != x.shape[i + 1] * x.stride(i + 1):
            return _rows(x.contiguous())
    return x, R, stride


# -- RMSNorm ---------------------------------------------------------------------------------------
@triton.jit
def _rms_norm_kernel(X, W, Y, sx, sy, N, eps, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    xf = tl.load(X + row * sx + cols, mask=m, other=0.0).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / N + eps)
    y = (xf * inv).to(Y.dtype.element_ty)
    if HAS_W:
        w = tl.load(W + cols, mask=m, other=0.0)
        y = (y.to(tl.float32) * w.to(tl.float32)).to(Y.dtype.element_ty)
    tl.store(Y + row * sy + cols, y, mask=m)


def rms_norm(x, weight, eps: float):
    shape = x.shape
    N = shape[-1]
    x2, R, sx = _rows(x)
    y = torch.empty(shape, device=x.device, dtype=x.dtype)
    if R:
        BLOCK = triton.next_power_of_2(N)
        _launched()
        _rms_norm_kernel[(R,)](x2, weight if weight is not None else x2, y, sx, N, N, eps,
                               HAS_W=weight is not None, BLOCK=BLOCK, num_warps=min(16, max(1, BLOCK // 256)))
    return y


# -- RoPE ------------------------------------------------------------------------------------------
@triton.jit
def _rope_kernel(X, COS, SIN, OUT, sxr, n_pos, R, HQ, HK, HV, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_V: tl.constexpr):
    """One row (token) per program, all its heads at once: a ``[BLOCK_H, HALF]`` tile of rotated
    heads, then (``BLOCK_V`` > 0) a ``[BLOCK_V, D]`` tile of plain heads, copied."""
    r = tl.program_id(0).to(tl.int64)
    D: tl.constexpr = 2 * HALF
    t = r % n_pos
    i = tl.arange(0, HALF)
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    m = (h < HQ + HK)[:, None]
    src = X + r * sxr + h[:, None] * D + i[None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
    c1 = tl.load(COS + t * D + i).to(tl.float32)[None, :]
    c2 = tl.load(COS + t * D + HALF + i).to(tl.float32)[None, :]
    s1 = tl.load(SIN + t * D + i).to(tl.float32)[None, :]
    s2 = tl.load(SIN + t * D + HALF + i).to(tl.float32)[None, :]
    off = tl.where(h < HQ, r * HQ * D + h * D, R * HQ * D + r * HK * D + (h - HQ) * D)[:, None] + i[None, :]
    tl.store(OUT + off, (x1 * c1 - x2 * s1).to(OUT.dtype.element_ty), mask=m)
    tl.store(OUT + off + HALF, (x2 * c2 + x1 * s2).to(OUT.dtype.element_ty), mask=m)
    if BLOCK_V > 0:
        hv = tl.arange(0, BLOCK_V).to(tl.int64)
        j = tl.arange(0, D)
        mv = (hv < HV)[:, None]
        val = tl.load(X + r * sxr + (HQ + HK) * D + hv[:, None] * D + j[None, :], mask=mv, other=0.0)
        tl.store(OUT + R * (HQ + HK) * D + r * HV * D + hv[:, None] * D + j[None, :], val, mask=mv)


def rope(x, cos, sin, n_first: int | None = None, n_plain: int = 0):
    B, n, H, D = x.shape
    if n_plain and n_first is None:
        raise ValueError("n_plain needs n_first")
    if x.stride(-1) != 1 or x.stride(-2) != D or x.stride(0) != n * x.stride(1):
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    HV = n_plain
    HQ = H - HV if n_first is None else n_first
    HK = H - HV - HQ
    R = B * n
    out = torch.empty(R * H * D, device=x.device, dtype=x.dtype)
    if R and H:
        BLOCK_H = triton.next_power_of_2(HQ + HK)
        BLOCK_V = triton.next_power_of_2(HV) if HV else 0
        _launched()
        _rope_kernel[(R,)](x, cos, sin, out, x.stride(1), n, R, HQ, HK, HV, HALF=D // 2, BLOCK_H=BLOCK_H,
                           BLOCK_V=BLOCK_V, num_warps=min(8, max(1, BLOCK_H * D // 1024)))
    q = out[: R * HQ * D].view(B, n, HQ, D)
    if n_first is None:
        return q
    k = out[R * HQ * D: R * (HQ + HK) * D].view(B, n, HK, D)
    return (q, k, out[R * (HQ + HK) * D:].view(B, n, HV, D)) if HV else (q, k)


# -- SwiGLU ----------------------------------------------------------------------------------------
@triton.jit
def _silu_mul_kernel(X, OUT, sx, F, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < F
    a = tl.load(X + r * sx + c, mask=m, other=0.0).to(tl.float32)
    b = tl.load(X + r * sx + F + c, mask=m, other=0.0).to(tl.float32)
    s = (a / (1.0 + tl.exp(-a))).to(OUT.dtype.element_ty)
    tl.store(OUT + r * F + c, (s.to(tl.float32) * b).to(OUT.dtype.element_ty), mask=m)


def silu_mul(gu):
    F2 = gu.shape[-1]
    x2, R, sx = _rows(gu)
    F = F2 // 2
    out = torch.empty(*gu.shape[:-1], F, device=gu.device, dtype=gu.dtype)
    if R:
        BLOCK = min(1024, triton.next_power_of_2(F))
        _launched()
        _silu_mul_kernel[(R, triton.cdiv(F, BLOCK))](x2, out, sx, F, BLOCK=BLOCK, num_warps=4)
    return out


# -- merging partial attentions ----------------------------------------------------------------------
@triton.jit
def _merge_kernel(O1, L1, O2, L2, OUT, s1b, s1h, s1n, s2b, s2h, s2n, syb, syh, syn, H, n,
                  D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows ``[BLOCK_N, D]`` of one (batch, head): ``(o1 e^l1 + o2 e^l2) / (e^l1 + e^l2)`` in float32."""
    bh = tl.program_id(0)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = rows < n
    cols = tl.arange(0, D)
    l1 = tl.load(L1 + bh.to(tl.int64) * n + rows, mask=m, other=0.0)
    l2 = tl.load(L2 + bh.to(tl.int64) * n + rows, mask=m, other=0.0)
    mx = tl.maximum(l1, l2)
    w1, w2 = tl.exp(l1 - mx), tl.exp(l2 - mx)
    r = rows[:, None].to(tl.int64)
    o1 = tl.load(O1 + b * s1b + h * s1h + r * s1n + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
    o2 = tl.load(O2 + b * s2b + h * s2h + r * s2n + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
    o = (o1 * w1[:, None] + o2 * w2[:, None]) / (w1 + w2)[:, None]
    tl.store(OUT + b * syb + h * syh + r * syn + cols[None, :], o.to(OUT.dtype.element_ty), mask=m[:, None])


def merge_attention(o1, l1, o2, l2, out=None):
    """``o1``, ``o2`` ``[B, H, n, D]`` (any strides with the last dim contiguous), their natural-log
    log-sum-exps ``l1``, ``l2`` ``[B, H, n]`` (float32); the result goes into ``out`` if given."""
    B, H, n, D = o1.shape
    o1 = o1 if o1.stride(-1) == 1 else o1.contiguous()
    o2 = o2 if o2.stride(-1) == 1 else o2.contiguous()
    out = torch.empty_like(o1) if out is None else out
    l1, l2 = l1.float().contiguous(), l2.float().contiguous()
    if B * H * n:
        BLOCK_N = 64
        _launched()
        _merge_kernel[(B * H, triton.cdiv(n, BLOCK_N))](
            o1, l1, o2, l2, out, o1.stride(0), o1.stride(1), o1.stride(2), o2.stride(0), o2.stride(1),
            o2.stride(2), out.stride(0), out.stride(1), out.stride(2), H, n, D=D, BLOCK_N=BLOCK_N, num_warps=4)
    return out


# -- gated retention: output norm and gate ---------------------------------------------------------
@triton.jit
def _head_norm_gate_kernel(O, G, OUT, so, sg, eps, H, D: tl.constexpr, BLOCK_H: tl.constexpr):
    """One row (token) per program, all its heads at once: a ``[BLOCK_H, D]`` tile."""
    r = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    j = tl.arange(0, D)
    m = (h < H)[:, None]
    idx = h[:, None] * D + j[None, :]
    o = tl.load(O + r * so + idx, mask=m, other=0.0).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(o * o, axis=1) / D + eps)
    on = (o * inv[:, None]).to(OUT.dtype.element_ty).to(tl.float32)
    g = tl.load(G + r * sg + idx, mask=m, other=0.0).to(tl.float32)
    sg_ = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + r * H * D + idx, (sg_ * on).to(OUT.dtype.element_ty), mask=m)


def head_norm_gate(o, g, eps: float):
    B, n, H, D = o.shape
    o2, R, so = _rows(o.reshape(B, n, H * D))
    g2, _, sg = _rows(g)
    out = torch.empty(B, n, H * D, device=o.device, dtype=o.dtype)
    if R:
        BLOCK_H = triton.next_power_of_2(H)
        _launched()
        _head_norm_gate_kernel[(R,)](o2, g2, out, so, sg, eps, H, D=D, BLOCK_H=BLOCK_H,
                                     num_warps=min(8, max(1, BLOCK_H * D // 1024)))
    return out


# -- gated retention: one decoding step ------------------------------------------------------------
@triton.jit
def _gret_decode_kernel(P, COS, SIN, S_IN, S_OUT, OUT, sp, d_model, H, scale, inv_norm, eps,
                        HALF: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    D: tl.constexpr = 2 * HALF
    i = tl.arange(0, HALF)
    j = tl.arange(0, D)
    row = P + b * sp
    c1 = tl.load(COS + i).to(tl.float32)
    c2 = tl.load(COS + HALF + i).to(tl.float32)
    s1 = tl.load(SIN + i).to(tl.float32)
    s2 = tl.load(SIN + HALF + i).to(tl.float32)
    q1 = tl.load(row + h * D + i).to(tl.float32)
    q2 = tl.load(row + h * D + HALF + i).to(tl.float32)
    k1 = tl.load(row + d_model + h * D + i).to(tl.float32)
    k2 = tl.load(row + d_model + h * D + HALF + i).to(tl.float32)
    dt = OUT.dtype.element_ty
    rq1 = (q1 * c1 - q2 * s1).to(dt).to(tl.float32)       # q and k rounded as RoPE's output is
    rq2 = (q2 * c2 + q1 * s2).to(dt).to(tl.float32)
    rk1 = (k1 * c1 - k2 * s1).to(dt).to(tl.float32)
    rk2 = (k2 * c2 + k1 * s2).to(dt).to(tl.float32)
    v = tl.load(row + 2 * d_model + h * D + j).to(tl.float32)
    g = tl.load(row + 3 * d_model + h * D + j).to(tl.float32)
    gt = tl.load(row + 4 * d_model + h).to(tl.float32)
    logdecay = (tl.minimum(gt, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(gt)))) * inv_norm
    decay = tl.exp(logdecay)
    sb = pid * D * D
    idx = i[:, None] * D + j[None, :]
    S1 = tl.load(S_IN + sb + idx) * decay + rk1[:, None] * v[None, :]
    S2 = tl.load(S_IN + sb + HALF * D + idx) * decay + rk2[:, None] * v[None, :]
    tl.store(S_OUT + sb + idx, S1)
    tl.store(S_OUT + sb + HALF * D + idx, S2)
    o = tl.sum((rq1 * scale)[:, None] * S1, axis=0) + tl.sum((rq2 * scale)[:, None] * S2, axis=0)
    o = o.to(dt).to(tl.float32)
    on = (o / tl.sqrt(tl.sum(o * o, axis=0) / D + eps)).to(dt).to(tl.float32)
    sg_ = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(OUT + b * d_model + h * D + j, (sg_ * on).to(dt))


def gret_decode(p, cos, sin, state, n_heads: int, scale: float, normalizer: float, eps: float,
                state_out=None):
    B, n, W = p.shape
    if n != 1:
        raise ValueError("gret_decode takes one token per row")
    H = n_heads
    d = (W - H) // 4
    D = d // H
    p2, _, sp = _rows(p)
    if state.dtype != torch.float32 or not state.is_contiguous():
        state = state.float().contiguous()
    if state_out is None:
        state_out = torch.empty_like(state)
    elif not state_out.is_contiguous() or state_out.dtype != torch.float32:
        raise ValueError("state_out must be a contiguous float32 tensor")
    out = torch.empty(B, 1, d, device=p.device, dtype=p.dtype)
    _launched()
    _gret_decode_kernel[(B * H,)](p2, cos.contiguous(), sin.contiguous(), state, state_out, out, sp, d, H,
                                  float(scale), 1.0 / float(normalizer), float(eps), HALF=D // 2,
                                  num_warps=8 if D >= 128 else 4)
    return out, state_out


# -- float8 rows ------------------------------------------------------------------------------------
@triton.jit
def _round_e4m3(v):
    """``v`` (float32, |v| <= 448) rounded to nearest even at e4m3's precision (3 mantissa bits; below
    2^-6 its subnormal step 2^-9), in float32 arithmetic: adding and taking away ``1.5 * 2^23`` units
    of the value's step rounds it at that step, to nearest even. The cast of the result to e4m3 is
    then exact under any rounding. (A direct cast would do the same on the GPU; Triton 3.9's
    interpreter, which the CPU tests run, drops the carry when rounding up crosses a power of two:
    124.3 became 64.)"""
    a = tl.abs(v)
    e = (a.to(tl.int32, bitcast=True) >> 23) & 0xFF            # biased float32 exponent
    e = tl.maximum(e, 127 - 6)                                 # e4m3's subnormals share one step
    magic = (((e + 20) << 23) | 0x400000).to(tl.float32, bitcast=True)   # 1.5 * 2^23 * 2^(e - 127 - 3)
    r = (a + magic) - magic
    return tl.where(v < 0, -r, r)


# The scale is a product (``naive.E4M3_INV_MAX``), rounded alike everywhere; the quotient uses ``div_rn``
# (IEEE round-to-nearest, as PyTorch divides by a tensor): Triton's ``/`` on float32 compiles to the GPU's
# approximate division (``div.full.f32``, up to 2 ulp), which moved an element across an e4m3 rounding
# midpoint now and then (one H200 run: rows of 18944 differed from the plain form, 3072 and 8192 did not).
@triton.jit
def _quantize_rows_kernel(X, Q, S, sx, K, qmax, inv_qmax, tiny, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:                      # the whole row in registers: one read
        m = cols < K
        x = tl.load(X + r * sx + cols, mask=m, other=0.0).to(tl.float32)
        s = tl.maximum(tl.max(tl.abs(x), axis=0) * inv_qmax, tiny)
        q = _round_e4m3(tl.minimum(tl.maximum(tl.math.div_rn(x, s), -qmax), qmax))
        tl.store(Q + r * K + cols, q.to(Q.dtype.element_ty), mask=m)
    else:                              # wide rows: the largest magnitude first, then the row again
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for c0 in range(0, K, BLOCK):
            m = c0 + cols < K
            x = tl.load(X + r * sx + c0 + cols, mask=m, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        s = tl.maximum(tl.max(amax, axis=0) * inv_qmax, tiny)
        for c0 in range(0, K, BLOCK):
            m = c0 + cols < K
            x = tl.load(X + r * sx + c0 + cols, mask=m, other=0.0).to(tl.float32)
            q = _round_e4m3(tl.minimum(tl.maximum(tl.math.div_rn(x, s), -qmax), qmax))
            tl.store(Q + r * K + c0 + cols, q.to(Q.dtype.element_ty), mask=m)
    tl.store(S + r, s)


QUANT_BLOCK = 4096       # a row up to this wide is read once


def quantize_rows(x, block: int = QUANT_BLOCK):
    """``naive.quantize_rows_ref`` in one kernel: e4m3 ``q`` (..., K) and float32 scales (..., 1)."""
    K = x.shape[-1]
    x2, R, sx = _rows(x)
    q = torch.empty(x.shape, device=x.device, dtype=E4M3)
    s = torch.empty(*x.shape[:-1], 1, device=x.device, dtype=torch.float32)
    if R:
        BLOCK = min(block, triton.next_power_of_2(K))
        _launched()
        _quantize_rows_kernel[(R,)](x2, q, s, sx, K, E4M3_MAX, E4M3_INV_MAX, FP8_TINY, BLOCK=BLOCK,
                                    ONE_BLOCK=BLOCK >= K, num_warps=min(16, max(1, BLOCK // 256)))
    return q, s
