"""Plain-PyTorch references for gated retention (the YOCO self-decoder's token mixer).

Shapes (the layout fla-core uses): q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]``
(log of the per-head, data-dependent decay, <= 0), state ``[B, H, K, V]``.

The recurrence, per head::

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t

Both references compute in float32 and return ``(o, final_state)``; o has q's dtype.
"""
from __future__ import annotations

import torch


def gret_recurrent_ref(q, k, v, g, scale: float, initial_state=None):
    """Step-by-step recurrence: the definition, one token at a time."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float().clone()
    qf, kf, vf, gf = q.float() * scale, k.float(), v.float(), g.float()
    o = torch.empty(B, T, H, V, dtype=torch.float32, device=q.device)
    for t in range(T):
        S = S * gf[:, t].exp()[..., None, None] + kf[:, t, :, :, None] * vf[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", qf[:, t], S)
    return o.to(q.dtype), S


def gret_parallel_ref(q, k, v, g, scale: float, initial_state=None):
    """Quadratic parallel form: o = ((q k^T) * D) v with D_ij = exp(G_i - G_j) for j <= i."""
    B, T, H, K = q.shape
    qf, kf, vf = q.float() * scale, k.float(), v.float()
    G = g.float().cumsum(1)                                    # [B, T, H]
    diff = G[:, :, None, :] - G[:, None, :, :]                 # [B, Ti, Tj, H]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    decay = diff.masked_fill(~causal[None, :, :, None], float("-inf")).exp()
    A = torch.einsum("bihk,bjhk->bijh", qf, kf) * decay
    o = torch.einsum("bijh,bjhv->bihv", A, vf)
    last = G[:, -1]                                            # [B, H]
    kdec = kf * (last[:, None] - G).exp()[..., None]
    S = torch.einsum("bjhk,bjhv->bhkv", kdec, vf)
    if initial_state is not None:
        S0 = initial_state.float()
        o = o + torch.einsum("bihk,bhkv->bihv", qf * G.exp()[..., None], S0)
        S = S + S0 * last.exp()[..., None, None]
    return o.to(q.dtype), S
