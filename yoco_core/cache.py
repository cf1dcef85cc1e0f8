"""Inference caches.

* ``KVBuffer``: keys and values preallocated as ``[B, H_kv, capacity, head_dim]`` with a fill index.
  Appending writes in place; only when the capacity runs out does it grow (doubling), so decoding
  costs no per-token reallocation.
* ``YOCOCache``: one global ``KVBuffer`` shared by every cross-decoder layer (its size does not
  depend on depth) plus each self-decoder layer's constant-size state: the gated-retention state
  ``[B, H, K, V]`` (float32) or, for SWA, the last ``window - 1`` keys and values.
* ``TransformerCache``: one ``KVBuffer`` per layer.

Every cache reports its size in bytes (allocated memory, not only the filled part).
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


@dataclass
class YOCOCache:
    kv: KVBuffer
    states: list = field(default_factory=list)   # per self-decoder layer: Tensor or (k, v) or None

    @property
    def length(self) -> int:
        return self.kv.length

    @property
    def capacity(self) -> int:
        return self.kv.capacity

    def advance(self, n: int) -> None:
        self.kv.length += n

    def kv_nbytes(self) -> int:
        return self.kv.nbytes()

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


@dataclass
class TransformerCache:
    layers: list  # list[KVBuffer]

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def advance(self, n: int) -> None:
        for b in self.layers:
            b.length += n

    def kv_nbytes(self) -> int:
        return sum(b.nbytes() for b in self.layers)

    def state_nbytes(self) -> int:
        return 0

    def nbytes(self) -> int:
        return self.kv_nbytes()
