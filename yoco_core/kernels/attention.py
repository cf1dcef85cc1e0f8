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
* otherwise (a prefill chunk after earlier chunks): on CUDA ``causal_with_prefix`` (the chunk's
  causal block and its unmasked earlier keys, two cuDNN calls merged by log-sum-exp: the fast
  kernels, and no mask); elsewhere a lower-right ``CausalBias``, which the fused backends take
  without materialising an ``n x L`` mask. (Plain ``is_causal`` would align top-left.)

With ``length`` (a device tensor), the query is one new token and ``k``/``v`` are whole preallocated
buffers of which the first ``length`` positions are valid: the split-KV decode kernel
(``kernels/decode_attention``) runs, with no shape that depends on the length, so the decode step
can be captured in a CUDA graph.

``sliding_window_attend`` does the same for a band of ``window`` keys: on CUDA flash-attention 2's
windowed kernel or whole windows of queries on cuDNN (``band_attention``); elsewhere block by block
so that no mask larger than ``block x (block + window)`` exists. The fused forms take bf16 / fp16
only (``_on_fused``). ``attention_ref`` is the float64 reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backend, fused
from .decode_attention import decode_attention


SPLIT_CHUNK = 65536
# Sliding windows up to this many keys take flash-attention 2's own window, wider ones the cuDNN
# band (H200, bf16, heads of 128): window 1024, a 16K chunk of 24 heads: flash 0.93 ms, band 1.40,
# masked blocks 3.79; window 4096, a 64K chunk of 32 over 8 heads: flash 15.6 ms, band 10.3, masked
# 33.6 (scripts/diag_prefill_kernels.py --parts swa).
FLASH_WINDOW = 2048


def attend(q, k, v, length=None, *, scale: float | None = None, window: int = 0, softcap: float = 0.0):
    """``scale``: the logit scale (None: ``D ** -0.5``); ``window`` > 0: each query sees its last
    ``window`` keys, itself included (a sliding window); ``softcap`` > 0: logits become
    ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2), on the explicit blockwise
    path (``softcap_attend``) since the fused kernels have no such option."""
    if length is not None:
        return decode_attention(q[:, :, 0], k, v, length, scale=scale, window=window, softcap=softcap)[:, :, None]
    n, L = q.shape[2], k.shape[2]
    if softcap:
        return softcap_attend(q, k, v, softcap, scale, window)
    if window and L > window:          # the window bites: some query has more keys than it sees
        return sliding_window_attend(q, k, v, window, scale=scale)
    gqa = q.shape[1] != k.shape[1]
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, scale=scale)
    if n == L:
        out = _on_fused("cudnn_attention", causal_attention_split, q, k, v, SPLIT_CHUNK, scale) \
            if n > SPLIT_CHUNK else None
        if out is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa, scale=scale)
        return out
    out = _on_fused("cudnn_attention", causal_with_prefix, q, k, v, scale)     # a prefill chunk after others
    if out is None:
        # imported here: torch.nn.attention.bias imports torch._dynamo (1.1 s on the 2-core CPU), which
        # no other path needs before a first prompt
        from torch.nn.attention.bias import causal_lower_right

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n, L), enable_gqa=gqa, scale=scale)
    return out


def _on_fused(kind: str, fn, q, *args):
    """``fn(q, *args)`` (a form built on cuDNN's or flash-attention's fused kernels, ``kind``), or
    None where it does not apply: not bf16 / fp16 on CUDA (a float64 reference must never reach
    them), or a device that refused it before (recorded the first time, ``backend.refuse``: the
    plain form then)."""
    if not _fused_dtype(q) or backend.refused(kind, q.device):
        return None
    try:
        return fn(q, *args)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:
        backend.refuse(kind, q.device)
        return None


def _fused_dtype(q) -> bool:
    """What the fused kernels (cuDNN's, flash-attention's) take: bf16 / fp16 on CUDA."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _band_blocks(n: int, L: int, window: int, block: int, device):
    """The queries (the last ``n`` of ``L`` positions) in blocks ``[s, e)`` of ``block``, each with
    the keys ``[ks, ke)`` it can see and the causal (and ``window``) mask over them: None for a
    single query, which sees every key of its range (so no mask, and no host sync)."""
    off = L - n
    for s in range(0, n, block):
        e = min(n, s + block)
        ks, ke = (max(0, off + s - window + 1) if window else 0), off + e
        mask = None
        if e - s > 1:
            qpos = torch.arange(off + s, off + e, device=device)[:, None]
            kpos = torch.arange(ks, ke, device=device)[None, :]
            mask = (kpos <= qpos) & (kpos > qpos - window) if window else kpos <= qpos
        yield s, e, ks, ke, mask


def softcap_attend(q, k, v, softcap: float, scale: float | None = None, window: int = 0, block: int = 1024):
    """Causal attention (queries the last ``n`` of ``L`` positions) with soft-capped logits and an
    optional sliding window, an explicit float32 softmax over blocks of ``block`` queries (each block
    only against the keys it can see), so no mask larger than ``block x L`` exists."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rep = q.shape[1] // k.shape[1]
    outs = []
    for s, e, ks, ke, mask in _band_blocks(q.shape[2], k.shape[2], window, block, q.device):
        kb = k[:, :, ks:ke].repeat_interleave(rep, dim=1).float()
        vb = v[:, :, ks:ke].repeat_interleave(rep, dim=1).float()
        logits = torch.tanh((q[:, :, s:e].float() @ kb.transpose(-1, -2)) * (scale / softcap)) * softcap
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        outs.append((logits.softmax(-1) @ vb).to(q.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def partial_attention(q, k, v, causal: bool, scale: float | None = None):
    """Attention of ``q`` over ``k`` / ``v`` (``causal``: square, the queries at the keys'
    positions) and its natural-log log-sum-exp ``[B, H, n]`` (float32), so that attentions over
    disjoint key ranges can be merged (``merge_partials``). In bf16 / fp16 on CUDA: cuDNN's fused
    attention, which returns the log-sum-exp; otherwise an explicit float32 softmax."""
    B, H, n, D = q.shape
    fused_ok = _fused_dtype(q)
    if fused_ok and k.shape[1] != H and not backend.refused("cudnn_gqa", q.device):
        try:             # grouped-query heads as they are (cuDNN reads each KV head for its group)
            return _cudnn(q, k, v, causal, scale)
        except RuntimeError:
            backend.refuse("cudnn_gqa", q.device)
    if k.shape[1] != H:
        rep = H // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if fused_ok:
        return _cudnn(q, k, v, causal, scale)
    s = (q.float() @ k.float().transpose(-1, -2)) * (D ** -0.5 if scale is None else scale)
    if causal:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = s.logsumexp(-1)
    return ((s - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def _cudnn(q, k, v, causal: bool, scale):
    B, H, n, _ = q.shape
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    return out[0], out[1].reshape(B, H, n).float()


def merge_partials(o1, l1, o2, l2, out=None):
    """Two partial attentions of the same queries over disjoint keys, merged by their log-sum-exp
    (``fused.merge_attention``: one Triton pass on CUDA), into ``out`` if given."""
    return fused.merge_attention(o1, l1, o2, l2, out)


def causal_with_prefix(q, k, v, scale: float | None = None, out=None):
    """Causal attention of the last ``n`` of ``L`` positions: the queries' own ``n x n`` causal
    block plus every earlier key unmasked, two fused calls merged by log-sum-exp (no mask exists),
    into ``out`` if given."""
    off = k.shape[2] - q.shape[2]
    o, lse = partial_attention(q, k[:, :, off:], v[:, :, off:], True, scale)
    if not off:
        return o if out is None else out.copy_(o)
    return merge_partials(*partial_attention(q, k[:, :, :off], v[:, :, :off], False, scale), o, lse, out)


def causal_attention_split(q, k, v, chunk: int, scale: float | None = None):
    """Causal self-attention (``n == L``) by query chunks, each ``causal_with_prefix`` over the keys
    up to its end, written where it belongs in the output."""
    n = q.shape[2]
    out = torch.empty_like(q)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        causal_with_prefix(q[:, :, s:e], k[:, :, :e], v[:, :, :e], scale, out[:, :, s:e])
    return out


def sliding_window_attend(q, k, v, window: int, block: int = 1024, scale: float | None = None):
    """Causal attention where query i (the i-th of the last n positions) sees keys (p-window, p].
    In bf16 / fp16 on CUDA one fused form: ``flash_window`` for windows up to ``FLASH_WINDOW``,
    ``band_attention`` (cuDNN) for wider ones and wherever flash refused; otherwise blocks of
    ``block`` queries with their masks."""
    out = _on_fused("flash_window", flash_window, q, k, v, window, scale) if window <= FLASH_WINDOW else None
    if out is None:
        out = _on_fused("cudnn_band", band_attention, q, k, v, window, scale)
    return _masked_band(q, k, v, window, block, scale) if out is None else out


def _masked_band(q, k, v, window: int, block: int = 1024, scale: float | None = None):
    gqa = q.shape[1] != k.shape[1]
    outs = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, ks:ke], v[:, :, ks:ke], attn_mask=mask,
                                           enable_gqa=gqa, scale=scale)
            for s, e, ks, ke, mask in _band_blocks(q.shape[2], k.shape[2], window, block, q.device)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def band_attention(q, k, v, window: int, scale: float | None = None):
    """``sliding_window_attend`` by whole windows of queries, with no mask larger than one window.

    The queries (the last ``n`` of ``L`` positions) in blocks of ``W = window``: block ``b``'s query
    ``j`` sees its own block's keys causally (one causal call over all blocks at once, the blocks as
    the batch) and, of the ``W - 1`` keys before the block, those at or after ``j`` (the
    anti-causal part: queries 0..W-2, a second call over all blocks, causal over the reversed
    queries and keys); the two merge by log-sum-exp. Needs the ``W - 1`` keys before the first block to exist
    (``L - n >= W - 1``) or none at all (``L == n``); the queries past the last whole block, and
    any other case, take ``_masked_band``."""
    B, H, n, D = q.shape
    L, W = k.shape[2], window
    off, nb = L - n, n // window
    if nb == 0 or W < 2 or not (off == 0 or off >= W - 1):
        return _masked_band(q, k, v, W, scale=scale)
    out = torch.empty(B, n, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    first = 1 if off == 0 else 0            # the first block has no keys before it
    for b in range(B):
        blocks = lambda t, start, count: t[b, :, start:start + count * W].unflatten(1, (count, W)).transpose(0, 1)
        od, ld = partial_attention(blocks(q, 0, nb), blocks(k, off, nb), blocks(v, off, nb), True, scale)
        o = blocks(out, 0, nb)
        o.copy_(od)
        if nb > first:
            qa = blocks(q, first * W, nb - first)[:, :, : W - 1]
            ka, va = (blocks(t, off + first * W - W + 1, nb - first)[:, :, : W - 1] for t in (k, v))
            oa, la = _anti_causal(qa, ka, va, scale)
            merge_partials(od[first:, :, : W - 1], ld[first:, :, : W - 1], oa, la, o[first:, :, : W - 1])
    if nb * W < n:
        out[:, :, nb * W:] = _masked_band(q[:, :, nb * W:], k, v, W, scale=scale)
    return out


def _anti_causal(q, k, v, scale):
    """Attention of ``q [N, H, m, D]`` over ``k`` / ``v`` ``[N, H_kv, m, D]`` where query ``j`` sees
    the keys ``>= j`` (the mirror of causal: causal over both reversed), and its log-sum-exp."""
    o, lse = partial_attention(q.flip(2), k.flip(2), v.flip(2), True, scale)
    return o.flip(2), lse.flip(2)


def flash_window(q, k, v, window: int, scale: float | None = None):
    """``sliding_window_attend`` as one call of PyTorch's flash-attention 2 kernel with its window
    (``window_size_left``), which skips the tiles outside the band; queries the last ``n`` of
    ``L`` positions (bottom-right aligned), grouped-query heads as they are. CUDA only."""
    n, L = q.shape[2], k.shape[2]
    out = torch.ops.aten._flash_attention_forward(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, None, n, L, 0.0, True, False,
        scale=scale, window_size_left=window - 1, window_size_right=0)[0]
    return out.transpose(1, 2)


def attention_ref(q, k, v, window: int | None = None, scale: float | None = None, softcap: float = 0.0):
    """Explicit softmax in float64: the reference the functions above are tested against."""
    n, L = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    kf = k.double().repeat_interleave(rep, dim=1)
    vf = v.double().repeat_interleave(rep, dim=1)
    s = q.double() @ kf.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    qpos = torch.arange(L - n, L, device=q.device)[:, None]
    kpos = torch.arange(L, device=q.device)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    s = s.masked_fill(~allowed, float("-inf"))
    return (s.softmax(-1) @ vf).to(q.dtype)
