"""Inference caches.

* ``KVBuffer``: keys and values preallocated as ``[B, H_kv, capacity, head_dim]`` with a fill index.
  Appending writes in place; only when the capacity runs out does it grow (doubling), so decoding
  costs no per-token reallocation.
* ``YOCOCache``: one global ``KVBuffer`` shared by every cross-decoder layer (its size does not
  depend on depth) plus each self-decoder layer's constant-size state: the gated-retention state
  ``[B, H, K, V]`` (float32) or, for SWA, a ring of the newest ``window`` keys and values,
  preallocated with the cache and written in place (position ``p`` in slot ``p % window``), so its
  address never changes and a CUDA graph can decode over it. The states' shape (``StateSpec``) is
  given when the model makes the cache, so a cache can be filled without a prefill (``fill_random``).
* ``TransformerCache``: one ``KVBuffer`` per layer.

Both share one interface (``Cache``): ``batch``, ``length``, ``capacity``, ``buffers()`` (the
KV buffers), ``states``, ``nbytes()`` (allocated memory, not only the filled part), ``advance(n)``
and ``fill_random(ctx, generator)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class KVBuffer:
    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, capacity: int,
                 device=None, dtype=torch.float32):
        shape = (batch, n_kv_heads, max(1, capacity), head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        while cap < needed:
            cap *= 2
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], cap, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: ``[B, H_kv, n, head_dim]``, written at positions ``length .. length + n``."""
        n = k.shape[2]
        if self.length + n > self.capacity:
            self._grow(self.length + n)
        self.k[:, :, self.length: self.length + n] = k
        self.v[:, :, self.length: self.length + n] = v
        self.length += n

    def write_at(self, at: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one position given as a device tensor ``at`` ``[1]`` (no host sync, graph-safe).
        The host-side ``length`` is advanced by the caller (``advance``)."""
        self.k.index_copy_(2, at, k)
        self.v.index_copy_(2, at, v)

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass(frozen=True)
class StateSpec:
    """The shape of every self-decoder layer's state: gRet ``[B, heads, head_dim, head_dim]``
    float32; SWA a ring ``[2, B, heads, window, head_dim]`` (keys, values) in ``dtype`` (the
    model's), position ``p`` in slot ``p % window``: room for the newest ``window`` keys, the
    current token's included, whatever the context length."""
    kind: str                       # gret or swa (ModelConfig.self_decoder)
    heads: int
    head_dim: int
    window: int = 0
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, cfg, dtype: torch.dtype) -> StateSpec:
        """The states of a YOCO ``ModelConfig`` run in ``dtype``."""
        return cls(cfg.self_decoder, cfg.n_self_heads, cfg.self_head_dim, cfg.window, dtype)

    def empty(self, batch: int, device):
        """A layer's state before any token: SWA's ring, allocated (unfilled slots are never
        read); None for gRet, whose state the first prefill chunk makes."""
        if self.kind == "gret":
            return None
        return torch.empty(2, batch, self.heads, self.window, self.head_dim, device=device, dtype=self.dtype)

    def random(self, batch: int, ctx: int, device, generator: torch.Generator, state=None):
        """A standard-normal state as ``ctx`` tokens would leave it. SWA: the slots of the last
        ``min(ctx, window)`` positions random, the others zero, written into the ring ``state``
        where one is given (so its address stays) and returned."""
        H, h = self.heads, self.head_dim
        if self.kind == "gret":
            return torch.randn(batch, H, h, h, device=device, dtype=torch.float32, generator=generator)
        ring = self.empty(batch, device) if state is None else state
        ring.zero_()
        ring[:, :, :, : min(ctx, self.window)].normal_(generator=generator)
        return ring


class Cache:
    """What both caches share, over their KV buffers (``buffers()``) and ``states``."""

    states: list

    def buffers(self) -> list[KVBuffer]:
        raise NotImplementedError

    @property
    def batch(self) -> int:
        return self.buffers()[0].k.shape[0]

    @property
    def length(self) -> int:
        return self.buffers()[0].length

    @property
    def capacity(self) -> int:
        return self.buffers()[0].capacity

    def advance(self, n: int) -> None:
        for b in self.buffers():
            b.length += n

    def kv_nbytes(self) -> int:
        return sum(b.nbytes() for b in self.buffers())

    def state_nbytes(self) -> int:
        total = 0
        for s in self.states:
            if s is None:
                continue
            for t in (s if isinstance(s, tuple) else (s,)):
                total += t.nbytes
        return total

    def nbytes(self) -> int:
        return self.kv_nbytes() + self.state_nbytes()

    def fill_random(self, ctx: int, generator: torch.Generator) -> None:
        """Leave the cache as a prefill of ``ctx`` tokens would (same buffers and capacity, fill
        length ``ctx``) but holding standard-normal keys, values and states. A decode step reads
        and computes the same whatever the values: what decode-only profiling starts from."""
        if ctx > self.capacity:
            raise ValueError(f"fill_random: {ctx} positions exceed the cache's capacity {self.capacity}")
        for buf in self.buffers():
            for t in (buf.k, buf.v):
                t[:, :, :ctx].normal_(generator=generator)
            buf.length = ctx


@dataclass
class YOCOCache(Cache):
    kv: KVBuffer
    states: list = field(default_factory=list)   # per self-decoder layer: gRet Tensor or None, SWA ring
    state_spec: StateSpec | None = None            # what the states look like (for fill_random)

    def buffers(self) -> list[KVBuffer]:
        return [self.kv]

    def fill_random(self, ctx: int, generator: torch.Generator) -> None:
        if self.states and self.state_spec is None:
            raise ValueError("fill_random: this YOCOCache was made without its state_spec")
        super().fill_random(ctx, generator)
        for i, s in enumerate(self.states):
            self.states[i] = self.state_spec.random(self.batch, ctx, self.kv.k.device, generator, s)


@dataclass
class TransformerCache(Cache):
    layers: list  # list[KVBuffer]

    def buffers(self) -> list[KVBuffer]:
        return self.layers

    @property
    def states(self) -> list:
        return []
