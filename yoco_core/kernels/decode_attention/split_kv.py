"""Flash-decoding (split-KV) in Triton: one query token per row against a preallocated KV buffer.

Shapes as in ``naive.py``: q ``[B, H, D]``, k / v ``[B, H_kv, C, D]`` (C = capacity), and the fill
length as a DEVICE integer tensor (``[B]``, ``[1]`` or 0-d, int32 or int64) read inside the kernel,
so a decode step can be captured once in a CUDA graph and replayed while the cache grows: the grid,
the workspace and every launch argument depend only on shapes (the capacity), never on the length.

Phase 1, grid ``(B * H_kv, num_splits)``: a program owns one KV head of one row and ALL the ``G =
H // H_kv`` query heads that read it (the group's rows padded to ``BLOCK_G >= 16`` for ``tl.dot``,
padding masked), so each K / V tile is read from memory once per group. It takes the
``split``-th of ``num_splits`` equal, ``BLOCK_N``-aligned pieces of ``[0, length)`` (the pieces are
cut from the runtime length, so the work stays balanced whatever the fill), runs an online softmax
over it tile by tile (running max, sum and accumulator in float32) and writes the normalised
partial output and its log-sum-exp (base 2) to a float32 workspace. A piece that starts at or past
the length writes an empty partial (output 0, lse -inf).

Phase 2, grid ``(B * H,)``: merges the pieces of each head by their log-sum-exp.

Positions at and beyond the length are never loaded (masked loads), whatever they hold.

Only the model's shapes (H_kv, G, D) and the tile size are compile-time constants: the capacity, the
number of splits and the length are runtime values, so neither a growing cache nor a sliced view
(capacity = length, the eager path) triggers a recompilation.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .naive import supports_head_dim

__all__ = ["decode_attention_triton", "choose_num_splits", "make_workspace", "DEFAULT_BLOCK_N",
           "DEFAULT_NUM_WARPS", "DEFAULT_NUM_STAGES", "CALLS"]

DEFAULT_BLOCK_N = 64      # keys per tile: a [64, 128] bf16 K tile is 16 KB, K + V 32 KB per stage
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 3    # software-pipelined tile loads (3 x 32 KB of shared memory at D = 128)
MIN_BLOCKS_PER_SPLIT = 4  # a split of a full buffer covers at least 4 tiles (256 positions)
WAVES = 4                 # aim for about 4 programs per SM in phase 1
MAX_SPLITS = 256
COMBINE_CHUNK = 16        # splits merged per step in phase 2

CALLS = {"triton": 0}     # incremented on every launch: lets the tests prove the kernel ran


@triton.jit      # one Triton program (a kernel cannot call Python helpers): longer than 60 lines
def _split_kernel(
    Q, K, V, LEN, PART_O, PART_LSE,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_lb, stride_lh, stride_ls,
    len_stride, capacity, num_splits, qk_scale, window,
    H_KV: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr, SOFTCAP: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // H_KV
    hk = pid % H_KV

    length = tl.load(LEN + b * len_stride).to(tl.int32)
    length = tl.maximum(tl.minimum(length, capacity), 0)
    lo = tl.where(window > 0, tl.maximum(length - window, 0), 0)     # a sliding window: [lo, length)
    # This split's piece of [lo, length): equal numbers of BLOCK_N tiles, cut from the runtime length.
    tiles_per_split = tl.cdiv(tl.cdiv(length - lo, BLOCK_N), num_splits)
    start = lo + split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, length)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_g = offs_g < G
    heads = hk * G + offs_g                                   # the group's query heads

    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    q_ptrs = Q + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=mask_g[:, None], other=0.0)      # [BLOCK_G, D], padding rows 0
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b64 * stride_kb + hk64 * stride_kh + offs_d[None, :] * stride_kd
    v_base = V + b64 * stride_vb + hk64 * stride_vh + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        valid = pos < end
        k = tl.load(k_base + pos[:, None] * stride_kn, mask=valid[:, None], other=0.0)   # [BLOCK_N, D]
        if DOT_F32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale           # log2 units
        if SOFTCAP > 0:      # cap * tanh(logit / cap), back in log2 units; tanh(y) = 2 sigmoid(2y) - 1
            s = (2.0 * tl.sigmoid(s * (2.0 / (SOFTCAP * 1.4426950408889634))) - 1.0) * (SOFTCAP * 1.4426950408889634)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))                 # finite: every tile has a valid key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + pos[:, None] * stride_vn, mask=valid[:, None], other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    nonempty = l_i > 0
    o = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    o_ptrs = (PART_O + b64 * stride_ob + heads[:, None] * stride_oh + split * stride_os
              + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, o, mask=mask_g[:, None])
    tl.store(PART_LSE + b64 * stride_lb + heads * stride_lh + split * stride_ls, lse, mask=mask_g)


@triton.jit
def _combine_kernel(
    PART_O, PART_LSE, OUT,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_lb, stride_lh, stride_ls,
    stride_yb, stride_yh, stride_yd, num_splits,
    H: tl.constexpr, D: tl.constexpr, CHUNK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = pid % H
    offs_d = tl.arange(0, D)
    lse_base = PART_LSE + b * stride_lb + h * stride_lh
    o_base = PART_O + b * stride_ob + h * stride_oh + offs_d[None, :] * stride_od

    offs_s = tl.arange(0, CHUNK_S)
    m_c = tl.full([CHUNK_S], float("-inf"), dtype=tl.float32)
    for s0 in range(0, num_splits, CHUNK_S):                  # pass 1: the largest lse
        lse = tl.load(lse_base + (s0 + offs_s) * stride_ls, mask=s0 + offs_s < num_splits,
                      other=float("-inf"))
        m_c = tl.maximum(m_c, lse)
    m = tl.max(m_c, 0)
    m = tl.where(m == float("-inf"), 0.0, m)                  # every split empty (length 0)

    acc = tl.zeros([D], dtype=tl.float32)
    den = tl.zeros([CHUNK_S], dtype=tl.float32)
    for s0 in range(0, num_splits, CHUNK_S):                  # pass 2: weighted sum of partials
        offs_c = s0 + offs_s
        mask_c = offs_c < num_splits
        lse = tl.load(lse_base + offs_c * stride_ls, mask=mask_c, other=float("-inf"))
        w = tl.exp2(lse - m)                                  # 0 for empty splits
        o = tl.load(o_base + offs_c[:, None] * stride_os, mask=mask_c[:, None], other=0.0)
        acc += tl.sum(o * w[:, None], 0)
        den += w
    total = tl.sum(den, 0)
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(OUT + b * stride_yb + h * stride_yh + offs_d * stride_yd, out.to(OUT.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_num_splits(batch: int, n_kv_heads: int, capacity: int, device=None,
                      block_n: int = DEFAULT_BLOCK_N) -> int:
    """Splits per (row, KV head): enough phase-1 programs for ~WAVES per SM, at most one split per
    MIN_BLOCKS_PER_SPLIT tiles of the CAPACITY, at most MAX_SPLITS. Depends on shapes only (never on
    the fill length), so a captured CUDA graph keeps its grid while the cache grows."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        sms = _sm_count(dev.index if dev.index is not None else torch.cuda.current_device())
    else:
        sms = 132  # H100 SXM; only the interpreter runs here
    want = triton.cdiv(sms * WAVES, max(1, batch * n_kv_heads))
    most = max(1, triton.cdiv(capacity, block_n * MIN_BLOCKS_PER_SPLIT))
    return max(1, min(want, most, MAX_SPLITS))


def make_workspace(batch: int, n_heads: int, head_dim: int, num_splits: int, device):
    """The float32 partials phase 1 writes: ``(part_o [B, H, S, D], part_lse [B, H, S])``."""
    return (torch.empty(batch, n_heads, num_splits, head_dim, dtype=torch.float32, device=device),
            torch.empty(batch, n_heads, num_splits, dtype=torch.float32, device=device))


def _length_tensor(length, B: int, device) -> torch.Tensor:
    if not isinstance(length, torch.Tensor):
        # a host int: one small host-to-device copy (fine eagerly; pass a device tensor to capture)
        return torch.full((1,), int(length), dtype=torch.int32, device=device)
    if length.device != device:
        raise ValueError(f"length is on {length.device}, the tensors on {device}")
    if length.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"length must be int32 or int64, got {length.dtype}")
    if length.numel() not in (1, B):
        raise ValueError(f"length has {length.numel()} entries for a batch of {B}")
    return length.reshape(-1)


def _check_inputs(q, k, v, block_n: int) -> None:
    if q.dim() != 3 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B, H, D], k = v [B, H_kv, C, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, D = q.shape
    Bk, H_kv, C, Dk = k.shape
    if Bk != B or Dk != D or H % H_kv:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not supports_head_dim(D):
        raise ValueError(f"head_dim must be a power of two in [16, 256], got {D}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")


def decode_attention_triton(q, k, v, length, num_splits: int | None = None, *, out=None,
                            workspace=None, block_n: int = DEFAULT_BLOCK_N,
                            num_warps: int = DEFAULT_NUM_WARPS,
                            num_stages: int = DEFAULT_NUM_STAGES, scale: float | None = None,
                            window: int = 0, softcap: float = 0.0):
    """softmax(q k^T * scale) v over positions ``[0, length)`` (``window`` > 0: the last
    ``window`` of them; ``softcap`` > 0: capped logits); returns ``[B, H, D]`` in q's dtype.

    ``length``: a device int32 / int64 tensor of ``[B]``, ``[1]`` or 0-d (clamped to the capacity),
    or a Python int (eager use only: it is copied to the device). ``out`` (``[B, H, D]``, any
    strides) and ``workspace`` (from ``make_workspace`` with the same ``num_splits``) may be given
    preallocated; with both given and a device length tensor, the call allocates nothing and never
    synchronises, so it can be captured in a CUDA graph.
    """
    _check_inputs(q, k, v, block_n)
    B, H, D = q.shape
    H_kv, C = k.shape[1], k.shape[2]
    G = H // H_kv
    lens = _length_tensor(length, B, q.device)
    if num_splits is None:
        num_splits = (workspace[1].shape[2] if workspace is not None
                      else choose_num_splits(B, H_kv, C, q.device, block_n))
    if workspace is None:
        workspace = make_workspace(B, H, D, num_splits, q.device)
    part_o, part_lse = workspace
    if part_o.shape != (B, H, num_splits, D) or part_lse.shape != (B, H, num_splits):
        raise ValueError(f"workspace shapes {tuple(part_o.shape)}, {tuple(part_lse.shape)} do not fit "
                         f"B={B}, H={H}, splits={num_splits}, D={D}")
    if out is None:
        out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    elif out.shape != (B, H, D):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(B, H, D)}")

    block_g = max(16, triton.next_power_of_2(G))
    qk_scale = (D ** -0.5 if scale is None else scale) * math.log2(math.e)
    # The interpreter's tl.dot mishandles bfloat16 operands (triton 3.9 on CPU: garbage), so there
    # the bf16 tiles are upcast to float32 before the dots; on a GPU they stay bf16.
    dot_f32 = q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and not q.is_cuda)
    precision = "ieee" if dot_f32 else "tf32"
    _split_kernel[(B * H_kv, num_splits)](
        q, k, v, lens, part_o, part_lse,
        *q.stride(), *k.stride(), *v.stride(), *part_o.stride(), *part_lse.stride(),
        0 if lens.numel() == 1 else lens.stride(0), C, num_splits, qk_scale, int(window),
        H_KV=H_kv, G=G, BLOCK_G=block_g, D=D, BLOCK_N=block_n, DOT_PRECISION=precision, DOT_F32=dot_f32,
        SOFTCAP=float(softcap), num_warps=num_warps, num_stages=num_stages,
    )
    _combine_kernel[(B * H,)](
        part_o, part_lse, out,
        *part_o.stride(), *part_lse.stride(), *out.stride(), num_splits,
        H=H, D=D, CHUNK_S=COMBINE_CHUNK, num_warps=4,
    )
    CALLS["triton"] += 1
    return out
