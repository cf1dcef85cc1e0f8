"""Decoding one token at a time, as a CUDA graph where it can be.

On the GPU an eager decode step of a 26-layer model is a few hundred small kernel launches, and
their launch cost (not the memory traffic that bounds the step) dominates: ~65 ms per token
measured on an H100 for a 3B model whatever the context. ``CUDAGraphDecoder`` captures
``model.decode_step`` once over the preallocated cache and replays it: the new position lives in a
device tensor, the KV cache is written in place, and attention reads the whole buffer up to that
position with the split-KV kernel, so nothing in the graph depends on the context length.

``make_decoder(model, cache)`` returns the graph decoder where it applies (CUDA, one token per
row, a split-KV head size) and an eager one otherwise; both are called as
``step(token_ids [B, 1]) -> logits [B, 1, V]`` and advance the cache.
"""
from __future__ import annotations

import torch

from .kernels.decode_attention import supports_head_dim


class EagerDecoder:
    def __init__(self, model, cache):
        self.model, self.cache = model, cache

    def __call__(self, input_ids):
        return self.model.decode(input_ids, self.cache)[0]


class StaticDecoder:
    """The graph-safe step run eagerly (the CPU path that tests the same logic as the graph)."""

    def __init__(self, model, cache):
        self.model, self.cache = model, cache
        self.at = torch.tensor([cache.length], device=model.device)
        self._pos = cache.length
        self._buffers = self._buffer_ids()

    def _buffer_ids(self):
        c = self.cache
        return [b.k.data_ptr() for b in c.buffers()], [s.data_ptr() for s in c.states]

    def _check(self, n: int) -> None:
        if n != 1:
            raise ValueError("the static decoder takes one token per row")
        if self.cache.length != self._pos or self._buffer_ids() != self._buffers:
            raise RuntimeError("the cache was advanced or reallocated outside this decoder: "
                               "make a new one (make_decoder) for it")
        if self.cache.length + 1 > self.cache.capacity:
            raise ValueError(f"the cache is full ({self.cache.capacity} positions): prefill with a larger reserve")
        self.model._check_length(self.cache.length + 1)

    @torch.inference_mode()
    def __call__(self, input_ids):
        self._check(input_ids.shape[1])
        logits = self.model.decode_step(input_ids, self.cache, self.at)
        self._advance()
        return logits

    def _advance(self) -> None:
        self.cache.advance(1)
        self.at.add_(1)
        self._pos += 1


class CUDAGraphDecoder(StaticDecoder):
    """The static step captured once and replayed. The logits it returns live in one buffer that
    the next step overwrites: copy them to keep them."""

    def __init__(self, model, cache, warmup: int = 2):
        super().__init__(model, cache)
        self.ids = torch.zeros(cache.batch, 1, dtype=torch.long, device=model.device)
        states = cache.states
        # kept on the host: a device copy would double the states' memory at the capture (20 MB per
        # sequence for YOCO-3B, 14 GB at batch 700), which no memory estimate of a cell counts
        saved = [s.to("cpu") for s in states]
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):      # warm-up: Triton compiles, cuBLAS picks its kernels
                for _ in range(warmup):
                    model.decode_step(self.ids, cache, self.at)
            torch.cuda.current_stream().wait_stream(side)
            for s, v in zip(states, saved):     # the warm-up must leave no trace in the state
                s.copy_(v)                      # (its KV writes sit at `at`, overwritten by the real step)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = model.decode_step(self.ids, cache, self.at)
        del saved

    @torch.inference_mode()
    def __call__(self, input_ids):
        self._check(input_ids.shape[1])
        self.ids.copy_(input_ids)
        self.graph.replay()
        self._advance()
        return self.out


def graph_capable(model) -> bool:
    """A YOCO (gRet or SWA) or Transformer (not a model transformers runs) whose attention head
    sizes the split-KV kernel takes (a power of two, 16-256; e.g. not OpenLLaMA-3B's 100): the
    others decode eagerly. The SWA ring is
    written in place at the device slot ``at % window`` and attended by the same kernel
    (``tests/gpu/test_gpu_decoding.py`` checks the captured step against float64)."""
    cfg = model.config
    if cfg.arch == "yoco" and cfg.self_decoder == "swa":
        return supports_head_dim(cfg.head_dim) and supports_head_dim(cfg.self_head_dim)
    return cfg.arch in ("yoco", "transformer") and supports_head_dim(cfg.head_dim)


def make_decoder(model, cache):
    """The fastest correct one-token decoder for this model and device."""
    if model.device.type == "cuda" and graph_capable(model):
        return CUDAGraphDecoder(model, cache)
    return EagerDecoder(model, cache)
