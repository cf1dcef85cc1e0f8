"""Softmax attention over a key/value sequence, causal with the queries at its end.

``attend`` is the one entry point the models use. Queries ``[B, H, n, D]`` are the last ``n``
positions of keys/values ``[B, H_kv, L, D]`` (grouped-query: ``H`` a multiple of ``H_kv``), so the
causal mask is aligned bottom-right. It dispatches to PyTorch's scaled_dot_product_attention:

* ``n == 1`` (decoding, YOCO's early-exit prefill): no mask at all, so the fused
  flash / cuDNN decode kernels run;
* ``n == L`` (a full forward): ``is_causal``; on CUDA past ``SPLIT_CHUNK`` positions by query
  chunks (``causal_attention_split``: each chunk's causal diagonal block plus its unmasked earlier
  keys, two cuDNN calls merged by log-sum-exp), which measured 10% faster than the single call at
  256K on an H100 (724 vs 804 ms per layer, 24 / 8 heads of 128; ``scripts/gpu_diagnose.py``);
  a device that refuses cuDNN's fused attention is recorded (``backend.refuse``) and from then on
  takes the single call;
* otherwise (a prefill chunk after earlier chunks): a lower-right ``CausalBias``, which the fused
  backends take without materialising an ``n x L`` mask. (Plain ``is_causal`` would align top-left.)

With ``length`` (a device tensor), the query is one new token and ``k``/``v`` are whole preallocated
buffers of which the first ``length`` positions are valid: the split-KV decode kernel
(``kernels/decode_attention``) runs, with no shape that depends on the length, so the decode step
can be captured in a CUDA graph.

``sliding_window_attend`` does the same for a band of ``window`` keys, block by block so that no
mask larger than ``block x (block + window)`` exists. ``attention_ref`` is the float64 reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from . import backend
from .decode_attention import decode_attention


SPLIT_CHUNK = 65536


def attend(q, k, v, length=None):
    if length is not None:
        return decode_attention(q[:, :, 0], k, v, length)[:, :, None]
    n, L = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if n == L:
        if q.is_cuda and n > SPLIT_CHUNK and not backend.refused("cudnn_attention", q.device):
            try:
                return causal_attention_split(q, k, v, SPLIT_CHUNK)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:     # no cuDNN fused attention on this GPU / build: the single call
                backend.refuse("cudnn_attention", q.device)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n, L), enable_gqa=gqa)


def partial_attention(q, k, v, causal: bool):
    """Attention of ``q`` over ``k`` / ``v`` (``causal``: square, the queries at the keys'
    positions) and its natural-log log-sum-exp ``[B, H, n]`` (float32), so that attentions over
    disjoint key ranges can be merged (``merge_partials``). On CUDA: cuDNN's fused attention, which
    returns the log-sum-exp; elsewhere an explicit float32 softmax."""
    B, H, n, D = q.shape
    if k.shape[1] != H:
        rep = H // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if q.is_cuda:
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False)
        return out[0], out[1].reshape(B, H, n).float()
    s = (q.float() @ k.float().transpose(-1, -2)) * D ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = s.logsumexp(-1)
    return ((s - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def merge_partials(o1, l1, o2, l2):
    """Two partial attentions of the same queries over disjoint keys, merged by their log-sum-exp."""
    m = torch.maximum(l1, l2)
    w1, w2 = (l1 - m).exp()[..., None], (l2 - m).exp()[..., None]
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(o1.dtype)


def causal_attention_split(q, k, v, chunk: int):
    """Causal self-attention (``n == L``) by query chunks: each chunk attends its own keys
    causally and every earlier key without a mask (two fused calls, merged by log-sum-exp)."""
    n = q.shape[2]
    out = torch.empty_like(q)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        o, lse = partial_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], causal=True)
        if s:
            o = merge_partials(*partial_attention(q[:, :, s:e], k[:, :, :s], v[:, :, :s], causal=False), o, lse)
        out[:, :, s:e] = o
    return out


def sliding_window_attend(q, k, v, window: int, block: int = 1024):
    """Causal attention where query i (the i-th of the last n positions) sees keys (p-window, p]."""
    n, L = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    off = L - n
    outs = []
    for s in range(0, n, block):
        e = min(n, s + block)
        ks, ke = max(0, off + s - window + 1), off + e
        if e - s == 1:      # one query sees every key of [ks, ke): no mask (and no host sync)
            mask = None
        else:               # several queries: the first never sees the last key, so a mask
            qpos = torch.arange(off + s, off + e, device=q.device)[:, None]
            kpos = torch.arange(ks, ke, device=q.device)[None, :]
            mask = (kpos <= qpos) & (kpos > qpos - window)
        outs.append(F.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, ks:ke], v[:, :, ks:ke], attn_mask=mask, enable_gqa=gqa))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def attention_ref(q, k, v, window: int | None = None):
    """Explicit softmax in float64: the reference both functions above are tested against."""
    n, L = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    kf = k.double().repeat_interleave(rep, dim=1)
    vf = v.double().repeat_interleave(rep, dim=1)
    s = q.double() @ kf.transpose(-1, -2) / q.shape[-1] ** 0.5
    qpos = torch.arange(L - n, L, device=q.device)[:, None]
    kpos = torch.arange(L, device=q.device)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    s = s.masked_fill(~allowed, float("-inf"))
    return (s.softmax(-1) @ vf).to(q.dtype)
