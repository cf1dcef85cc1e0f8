"""Single-token decode attention over a preallocated KV buffer: Triton flash-decoding on CUDA, the
plain-PyTorch reference elsewhere.

``decode_attention(q, k, v, length)``: q ``[B, H, D]``, k / v ``[B, H_kv, C, D]`` (C = capacity),
attends positions ``[0, length)``. On CUDA the split-KV Triton kernel runs (``split_kv.py``); it
reads ``length`` from a device tensor and never synchronises, so the call can be captured in a CUDA
graph. It takes head sizes that ``supports_head_dim`` (others run the reference, eagerly).
Elsewhere ``decode_attention_ref`` runs, except that ``YOCO_KERNEL_DECODE=triton`` together with
``TRITON_INTERPRET=1`` runs the Triton kernel in the interpreter on the CPU, for tests. ``YOCO_KERNEL_DECODE=torch`` forces the reference everywhere
(the rule: ``kernels/backend``).
"""
from __future__ import annotations

import torch

from .. import backend
from .naive import decode_attention_ref, supports_head_dim

__all__ = ["decode_attention", "decode_attention_ref", "decode_attention_triton", "backend_for",
           "supports_head_dim"]


def backend_for(x: torch.Tensor) -> str:
    return backend.select("decode", x)


def decode_attention(q, k, v, length, *, scale: float | None = None, window: int = 0, softcap: float = 0.0):
    """``[B, H, D]`` output of one query token per row over the first ``length`` cached positions
    (``window`` > 0: the last ``window`` of them; ``scale``, ``softcap``: ``naive.decode_attention_ref``).

    ``length``: int or integer tensor (0-d, [1] or [B]); on the Triton path pass it as a device
    tensor to capture the call in a CUDA graph."""
    if supports_head_dim(q.shape[-1]) and backend_for(q) == "triton":
        return decode_attention_triton(q, k, v, length, scale=scale, window=window, softcap=softcap)
    return decode_attention_ref(q, k, v, length, scale=scale, window=window, softcap=softcap)


def decode_attention_triton(*args, **kwargs):
    """The Triton entry point (``split_kv.decode_attention_triton``), imported on first use so that
    importing this package never compiles or decorates a kernel."""
    from .split_kv import decode_attention_triton as fn
    return fn(*args, **kwargs)
