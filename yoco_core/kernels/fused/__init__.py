"""Fused elementwise kernels: Triton on CUDA, the plain-PyTorch references elsewhere.

``rms_norm``, ``rope``, ``silu_mul``, ``head_norm_gate``, ``merge_attention``, ``gret_decode`` and
``quantize_rows`` (fp8 activations; see
``triton_kernels.py`` for what each fuses, ``naive.py`` for the math). The Triton kernels run on
CUDA tensors when no gradient is needed (they have no backward: training runs the references);
elsewhere the references run, except that ``YOCO_KERNEL_FUSED=triton`` together with
``TRITON_INTERPRET=1`` runs the Triton kernels in the interpreter on the CPU, for tests.
``YOCO_KERNEL_FUSED=torch`` forces the references everywhere (the rule: ``kernels/backend``).
The kernels that tile a head need a power-of-two head size (RoPE: half of it, and the whole head
rotated); other head sizes (e.g. OpenLLaMA-3B's 100, loaded through ``hf:``) and partial rotary
(Phi's ``partial_rotary_factor``) run the references.
"""
from __future__ import annotations

from .. import backend
from .naive import (gret_decode_ref, head_norm_gate_ref, merge_attention_ref, quantize_rows_ref, rms_norm_ref, rope_ref,
                    silu_mul_ref)

__all__ = ["rms_norm", "rope", "silu_mul", "head_norm_gate", "gret_decode", "merge_attention", "quantize_rows",
           "backend_for", "rms_norm_ref", "rope_ref", "silu_mul_ref", "head_norm_gate_ref", "gret_decode_ref",
           "merge_attention_ref", "quantize_rows_ref"]


def backend_for(*tensors) -> str:
    return backend.select("fused", *tensors)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _tk():
    from . import triton_kernels   # imported on first use: importing this package compiles nothing
    return triton_kernels


def rms_norm(x, weight, eps: float):
    if backend_for(x, weight) == "triton":
        return _tk().rms_norm(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def rope(x, cos, sin, n_first: int | None = None, n_plain: int = 0):
    if cos.shape[-1] == x.shape[-1] and _pow2(x.shape[-1] // 2) and backend_for(x) == "triton":
        return _tk().rope(x, cos, sin, n_first, n_plain)
    return rope_ref(x, cos, sin, n_first, n_plain)


def silu_mul(gu):
    if backend_for(gu) == "triton":
        return _tk().silu_mul(gu)
    return silu_mul_ref(gu)


def head_norm_gate(o, g, eps: float):
    if _pow2(o.shape[-1]) and backend_for(o, g) == "triton":
        return _tk().head_norm_gate(o, g, eps)
    return head_norm_gate_ref(o, g, eps)


def merge_attention(o1, l1, o2, l2, out=None):
    if _pow2(o1.shape[-1]) and backend_for(o1, o2) == "triton":
        return _tk().merge_attention(o1, l1, o2, l2, out)
    return merge_attention_ref(o1, l1, o2, l2, out)


def gret_decode(p, cos, sin, state, n_heads: int, scale: float, normalizer: float, eps: float,
                state_out=None):
    d = (p.shape[-1] - n_heads) // 4
    if _pow2(d // n_heads) and backend_for(p) == "triton":
        return _tk().gret_decode(p, cos, sin, state, n_heads, scale, normalizer, eps, state_out)
    return gret_decode_ref(p, cos, sin, state, n_heads, scale, normalizer, eps, state_out)


def quantize_rows(x):
    """float8 e4m3 rows and their float32 scales (``naive.quantize_rows_ref``)."""
    if backend_for(x) == "triton":
        return _tk().quantize_rows(x)
    return quantize_rows_ref(x)
