"""Context parallel prefill: one prompt split over the ranks of a ``torch.distributed`` group.

``context_parallel_prefill(model, input_ids, group)``: every rank holds the same weights and the
whole prompt ``[B, T]``; rank ``r`` of ``R`` takes the ``r``-th of ``R`` contiguous pieces (sizes
differing by at most one, ``pieces``) and runs it through the model with its true positions.

* YOCO (the paper's chunk parallelism, arXiv 2405.05254, Appendix A), per self-decoder layer:
  gRet is linear in its initial state, so each rank runs its piece from a zero state, then gets the
  true initial state from rank ``r - 1`` (a chain of ``[B, H, K, V]`` states only:
  ``S_in(r + 1) = S_0(r) + exp(G_r) S_in(r)``, ``G_r`` the piece's summed log decay) and adds the
  outputs that state makes (``gated_retention`` with zero keys from ``S_in``). SWA: each rank gets
  the ``window - 1`` keys and values before its piece from rank ``r - 1`` (who forwards what it got
  where its own piece is shorter than that). After the self-decoder each rank computes its
  piece's global KV, all-gathered once; the cross-decoder runs for the last position only. The
  returned cache is the one ``model.prefill`` builds (the whole global KV, every self layer's state
  as the last rank left it), on every rank, so ``model.decode`` / ``make_decoder`` continue from it.
* The Transformer: ring attention. Each rank computes its piece's queries and keys per layer; the
  keys/values blocks go round the ring (``R - 1`` exchanges per layer, each overlapped with the
  partial attention of the block in hand, merged by log-sum-exp). Returns the last position's
  logits (from the last rank, broadcast) and each rank's KV shard (``RingShard``); decoding from a
  shard is not supported (``model.decode`` refuses it with one line). Soft-capped or windowed
  layers are refused.

Without gradients; the model is used as built (not tensor-parallel). Raises ValueError (one line)
where the prompt has fewer tokens than ranks or exceeds the model's maximum.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..kernels.attention import merge_partials, partial_attention
from ..kernels.gret import gated_retention
from ..model import YOCO, Transformer


def pieces(T: int, world: int) -> list[tuple[int, int]]:
    """(start, length) of each rank's contiguous piece of ``T`` tokens, the first ``T % world``
    pieces one token longer."""
    base, extra = divmod(T, world)
    out, start = [], 0
    for r in range(world):
        n = base + (r < extra)
        out.append((start, n))
        start += n
    return out


class _Group:
    """The group's size, this process's rank in it, and its peers' global ranks (what send,
    recv and broadcast take on every torch version)."""

    def __init__(self, group):
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def peer(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def send(self, t, r: int):
        """Start sending ``t`` to rank ``r``: (the request, the tensor sent, to keep until it is done)."""
        t = t.contiguous()
        return dist.isend(t, self.peer(r), group=self.group), t

    def recv(self, t, r: int):
        dist.recv(t, self.peer(r), group=self.group)
        return t

    def broadcast_from_last(self, t):
        dist.broadcast(t, self.peer(self.world - 1), group=self.group)
        return t


def _check(model, input_ids, g: _Group):
    B, T = input_ids.shape
    if T < g.world:
        raise ValueError(f"context parallel prefill needs at least one token per rank: {T} tokens, {g.world} ranks")
    model._check_length(T)


@torch.inference_mode()
def context_parallel_prefill(model, input_ids, group=None, reserve: int = 256):
    """Prefill the whole prompt ``input_ids`` ``[B, T]`` (the same on every rank) over the ranks of
    ``group`` (the default group if None), each rank its piece (``pieces``). YOCO: (logits of the
    last position ``[B, V]``, the cache ``model.prefill(input_ids, reserve=reserve)`` builds), on
    every rank. Transformer: (those logits, this rank's ``RingShard``)."""
    if isinstance(model, YOCO):
        return _yoco(model, input_ids, _Group(group), reserve)
    if isinstance(model, Transformer):
        return _ring(model, input_ids, _Group(group))
    raise ValueError(f"context parallel prefill runs our own models, not {type(model).__name__}")


# -- YOCO --------------------------------------------------------------------------------------
def _gret(layer, x, rope, g: _Group, sends: list):
    """One gRet block over this rank's piece, its initial state from rank ``r - 1`` (a zero state
    on rank 0); the final state goes to rank ``r + 1`` as soon as it is known. Returns (x, final
    state)."""
    attn = layer.attn
    D = attn.head_dim
    p = attn.proj(layer.attn_norm(x))          # GatedRetention.forward's prefill path, in two halves
    q, k, v, gate = attn.heads(p, rope)
    o, state = gated_retention(q, k, v, gate, D ** -0.5, None)
    if g.rank > 0:       # linear in the initial state: what S_in adds, to the state and the outputs
        s_in = g.recv(torch.empty_like(state), g.rank - 1)
        state = state + gate.sum(1).exp()[..., None, None] * s_in
    if g.rank < g.world - 1:
        sends.append(g.send(state, g.rank + 1))
    if g.rank > 0:
        o = o + gated_retention(q, torch.zeros_like(k), v, gate, D ** -0.5, s_in)[0]
    o = attn.output(o, p)
    return layer.residual(x, o), state


def _swa(layer, x, rope, start: int, g: _Group, sends: list):
    """One SWA block over this rank's piece (from position ``start``), the ``window - 1`` keys and
    values before it from rank ``r - 1``. Returns (x, the ring as this piece leaves it)."""
    attn = layer.attn
    B, n, _ = x.shape
    H, D, W = attn.n_heads, attn.head_dim, attn.window
    q, k, v = attn.heads(layer.attn_norm(x), rope)
    own = torch.stack((k, v))                                  # [2, B, H, n, D]
    need, out = min(start, W - 1), min(start + n, W - 1)       # keys before this piece, before the next
    last = g.rank == g.world - 1
    if not last and out and n >= out:                          # the next rank's keys are all ours
        sends.append(g.send(own[:, :, :, n - out:], g.rank + 1))
    prev = g.recv(own.new_empty(2, B, H, need, D), g.rank - 1) if need else own[:, :, :, :0]
    if not last and out and n < out:                           # ours and some we got
        sends.append(g.send(torch.cat((prev, own), dim=3)[:, :, :, -out:], g.rank + 1))
    ring = own.new_zeros(2, B, H, W, D)
    if need:
        slots = torch.arange(start - need, start, device=x.device) % W
        ring.index_copy_(3, slots, prev)
    o = attn._chunk(q, k, v, ring, start)                      # the model's chunk step over that ring
    o = o.transpose(1, 2).reshape(B, n, H * D)
    return layer.residual(x, o), ring


def _yoco(model: YOCO, input_ids, g: _Group, reserve: int):
    _check(model, input_ids, g)
    B, T = input_ids.shape
    parts = pieces(T, g.world)
    start, n = parts[g.rank]
    positions = model.positions(start, n)
    seq_len = model.seq_len_of(start + n, T)          # as a chunked prefill: the whole prompt's length
    rs, cross = model.ropes(positions, seq_len)
    x = model.embed_tokens(input_ids[:, start: start + n])
    swa = model.config.self_decoder == "swa"
    states, sends = [], []
    for layer in model.self_layers:
        x, s = _swa(layer, x, rs, start, g, sends) if swa else _gret(layer, x, rs, g, sends)
        states.append(s)
    # the self layers' final states and the last position's hidden state are the last rank's
    states = g.broadcast_from_last(torch.stack(states))
    # a copy: with batch 1, x[:, -1:] is already contiguous, and the broadcast would write the last
    # rank's row into this rank's x (whose global KV is computed next) in place
    x_last = g.broadcast_from_last(x[:, -1:].clone())
    # the global KV: each rank its piece's, gathered once (pieces padded to the longest)
    k, v = model.global_kv(x, cross[0])
    most = parts[0][1]
    mine = F.pad(torch.stack((k, v)), (0, 0, 0, most - n)).contiguous()
    gathered = [torch.empty_like(mine) for _ in range(g.world)]
    dist.all_gather(gathered, mine, group=g.group)
    for req, _ in sends:
        req.wait()
    cache = model.new_cache(B, T + reserve)
    for t, (_, m) in zip(gathered, parts):           # the pieces in order, unpadded
        cache.kv.append(t[0, :, :, :m], t[1, :, :, :m])
    del gathered, mine
    for i, s in enumerate(states):
        if swa:
            cache.states[i].copy_(s)                  # the ring the cache preallocated keeps its address
        else:
            cache.states[i] = s.clone()
    cross_last = model.ropes(model.positions(T - 1, 1), seq_len)[1]
    k, v = cache.kv.view()
    for layer in model.cross_layers:
        x_last = layer(x_last, cross_last, k, v)
    return model.logits(x_last)[:, -1], cache


# -- Transformer: ring attention -----------------------------------------------------------------
@dataclass
class RingShard:
    """A rank's part of a context-parallel Transformer prefill: per layer the keys and values
    ``[B, H_kv, n, D]`` of its piece (positions ``start .. start + n``) of a ``total``-token
    prompt. Not a cache: decoding needs every position's KV, and ``model.decode`` refuses it."""
    layers: list          # [(k, v)] per layer
    start: int
    total: int

    @property
    def length(self) -> int:
        raise ValueError("decoding after a context-parallel Transformer prefill is not supported "
                         "(each rank holds only its piece's KV): prefill with model.prefill to decode")


def _ring_attention(q, k, v, scale, parts, g: _Group):
    """Causal attention of this rank's queries over every rank's keys up to them: the keys and
    values blocks passed round the ring (to ``r + 1``, from ``r - 1``), each block in hand attended
    (its own causally, earlier ranks' whole, later ones skipped) while the next one travels."""
    blk, j = torch.stack((k, v)).contiguous(), g.rank
    o = lse = None
    nxt, prv = (g.rank + 1) % g.world, (g.rank - 1) % g.world
    for step in range(g.world):
        reqs = None
        if step < g.world - 1:
            buf = blk.new_empty(*blk.shape[:3], parts[(j - 1) % g.world][1], blk.shape[4])
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, blk, g.peer(nxt), g.group),
                                           dist.P2POp(dist.irecv, buf, g.peer(prv), g.group)])
        if j <= g.rank:
            o2, l2 = partial_attention(q, blk[0], blk[1], j == g.rank, scale)
            if o is None:
                o, lse = o2.float(), l2
            else:
                o, lse = merge_partials(o, lse, o2.float(), l2), torch.logaddexp(lse, l2)
        if reqs is not None:
            for r in reqs:
                r.wait()
            blk, j = buf, (j - 1) % g.world
    return o.to(q.dtype)


def _ring(model: Transformer, input_ids, g: _Group):
    cfg = model.config
    if cfg.attn_softcap or any(cfg.window_of(i) for i in range(cfg.n_layers)):
        raise ValueError(f"context parallel prefill of {cfg.name}: ring attention supports neither "
                         "soft-capped nor sliding-window layers")
    _check(model, input_ids, g)
    B, T = input_ids.shape
    parts = pieces(T, g.world)
    start, n = parts[g.rank]
    ropes = model.layer_ropes(model.positions(start, n), model.seq_len_of(start + n, T))
    x = model.embed_tokens(input_ids[:, start: start + n])
    shard = []
    for layer, rope in zip(model.layers, ropes):
        attn = layer.attn
        q, k, v = attn.heads(layer.attn_norm(x), rope)
        o = _ring_attention(q, k, v, attn.scale, parts, g).transpose(1, 2).reshape(B, n, -1)
        x = layer.residual(x, o)
        shard.append((k, v))
    logits = model.logits(x[:, -1:])[:, -1].contiguous()
    return g.broadcast_from_last(logits), RingShard(shard, start, T)
