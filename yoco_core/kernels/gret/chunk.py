"""Chunkwise-parallel gated retention in plain PyTorch (the CPU prefill path).

Within a chunk of C tokens the quadratic form runs in parallel; across chunks the state is
carried: for the cumulative log decay G inside a chunk,

    o_i   = sum_{j<=i} (q_i.k_j) exp(G_i - G_j) v_j  +  exp(G_i) q_i S_prev
    S_new = exp(G_C) S_prev + sum_j exp(G_C - G_j) k_j^T v_j

Cost is O(T C) instead of O(T^2). Computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


CHUNK = 64            # tokens per chunk (fla-core's chunk_simple_gla uses the same)
CARRY_BLOCK = 256     # chunks per block of the state carry (``_carry``)


def gret_chunk(q, k, v, g, scale: float, initial_state=None, chunk_size: int = CHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)
    pad = (-T) % C
    qf, kf, vf, gf = q.float() * scale, k.float(), v.float(), g.float()
    if pad:  # zero keys/values add nothing and a zero log-decay keeps the state: padding is inert
        qf, kf, vf = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (qf, kf, vf))
        gf = F.pad(gf, (0, 0, 0, pad))
    N = (T + pad) // C
    qf, kf = qf.view(B, N, C, H, K), kf.view(B, N, C, H, K)
    vf, gf = vf.view(B, N, C, H, V), gf.view(B, N, C, H)

    G = gf.cumsum(2)                                           # [B, N, C, H]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (G[:, :, :, None, :] - G[:, :, None, :, :]).masked_fill(~causal[:, :, None], float("-inf"))
    A = torch.einsum("bnihk,bnjhk->bnijh", qf, kf) * diff.exp()
    o = torch.einsum("bnijh,bnjhv->bnihv", A, vf)

    last = G[:, :, -1]                                         # [B, N, H]
    U = torch.einsum("bnjhk,bnjhv->bnhkv", kf * (last[:, :, None] - G).exp()[..., None], vf)
    S = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    Sprev, S = _carry(S, U, last)
    o = o + torch.einsum("bnihk,bnhkv->bnihv", qf * G.exp()[..., None], Sprev)
    o = o.reshape(B, N * C, H, V)[:, :T]
    return o.to(q.dtype), S


def _carry(S, U, last, block: int = CARRY_BLOCK):
    """The state entering each chunk, ``[B, N, H, K, V]``, and the final state.

    ``S_n = exp(last_{n-1}) S_{n-1} + U_{n-1}`` unrolled as one masked, decay-weighted sum over
    the chunks before n (a matmul, not N small sequential steps), ``block`` chunks at a time so the
    ``[block, block]`` weights stay small at any length; the state is carried between blocks."""
    B, N, H = last.shape
    out = []
    for s in range(0, N, block):
        e = min(N, s + block)
        L = last[:, s:e].cumsum(1)                             # log decay from block start through chunk n
        Lx = L - last[:, s:e]                                  # ... up to, not through, chunk n
        # weight of U_m in S_n (m < n): exp(sum of the decays of chunks m+1 .. n-1) = exp(Lx_n - L_m)
        w = Lx[:, :, None] - L[:, None, :]                     # [B, n, m, H]
        n_idx = torch.arange(e - s, device=last.device)
        w = w.masked_fill(~(n_idx[None, :] < n_idx[:, None])[None, :, :, None], float("-inf")).exp()
        out.append(torch.einsum("bnmh,bmhkv->bnhkv", w, U[:, s:e]) + Lx.exp()[..., None, None] * S[:, None])
        S = out[-1][:, -1] * last[:, e - 1].exp()[..., None, None] + U[:, e - 1]
    return torch.cat(out, 1) if len(out) > 1 else out[0], S


def gret_step(q, k, v, g, scale: float, state):
    """One decoding step (T == 1) of the recurrent form; state is updated out of place."""
    S = state.float() * g[:, 0].float().exp()[..., None, None] \
        + k[:, 0].float()[..., :, None] * v[:, 0].float()[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q[:, 0].float() * scale, S)
    return o[:, None].to(q.dtype), S
