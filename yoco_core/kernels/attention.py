"""Softmax attention over a key/value sequence, causal with the queries at its end.

``attend`` is the one entry point the models use. Queries ``[B, H, n, D]`` are the last ``n``
positions of keys/values ``[B, H_kv, L, D]`` (grouped-query: ``H`` a multiple of ``H_kv``), so the
causal mask is aligned bottom-right. It dispatches to PyTorch's scaled_dot_product_attention:

* ``n == 1`` (decoding, YOCO's early-exit prefill): no mask at all, so the fused
  flash / cuDNN decode kernels run;
* ``n == L`` (a full forward): ``is_causal``;
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

from .decode_attention import decode_attention


def attend(q, k, v, length=None):
    if length is not None:
        return decode_attention(q[:, :, 0], k, v, length)[:, :, None]
    n, L = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if n == L:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n, L), enable_gqa=gqa)


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
