"""The one check of the GPU tests, flash-attention's: a fast path is as accurate as plain PyTorch.

Each test computes a float64 reference from the very inputs the low-precision paths get (upcast,
so input rounding is no one's error), then the fast path (Triton kernels, fla-core, CUDA graphs)
and the plain PyTorch path (the ``*_ref`` functions, or ``kernels.backend.override(...="torch")``)
in the same low dtype. The fast path's error against the reference must be at most ``k`` times the
plain path's, plus a tiny floor (so that two exact paths pass). No absolute tolerance: the bound
is whatever error bf16 itself costs the plain path on these inputs.

The error is relative, ``||x - ref|| / ||ref||`` over the whole output: the largest single
difference depends on which binade the largest values fall in (a factor of 2 by chance), the
norm does not, and it still sees a systematic loss: kernels that round toward zero instead of
to nearest come out 2.5 times as far from the reference (measured in triton's CPU interpreter,
which converts to bf16 that way), beyond ``KERNEL_K``.

The references are the plain-PyTorch functions run on float64 tensors; where one upcasts with
``.float()`` (RMSNorm's statistic, gated retention's recurrence), that part runs in float32, whose
error (about 1e-7 relative) is four orders below the bf16 errors compared, so only bf16 cases are
tested (an fp32 case would compare float32 against float32).
"""
from __future__ import annotations

import torch

KERNEL_K = 2.0   # one kernel: it rounds where its reference does (or less often)
MODEL_K = 3.0    # a whole model, or a recurrence over many steps: errors accumulate differently
FLOOR = 1e-6     # added to the bound (a relative error): two exact paths pass


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||``, in float64."""
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def assert_as_accurate(fast: torch.Tensor, plain: torch.Tensor, ref: torch.Tensor, k: float,
                       what: str = "") -> tuple[float, float]:
    """``rel_error(fast, ref) <= k * rel_error(plain, ref) + FLOOR``; returns both errors."""
    assert fast.shape == plain.shape == ref.shape, (what, fast.shape, plain.shape, ref.shape)
    assert torch.isfinite(fast).all(), f"{what}: the fast path gave non-finite values"
    e_fast, e_plain = rel_error(fast, ref), rel_error(plain, ref)
    assert e_fast <= k * e_plain + FLOOR, (
        f"{what}: fast path error {e_fast:.3e} > {k:g} x the plain PyTorch path's {e_plain:.3e} "
        f"(+ {FLOOR:.0e}) against float64")
    return e_fast, e_plain
