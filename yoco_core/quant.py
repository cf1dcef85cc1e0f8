"""fp8 inference for our models: every projection of the blocks as float8 (e4m3) weights with one
scale per output channel, its input quantized to float8 per row (per token) on the fly, the two
multiplied by ``torch._scaled_mm`` with row-wise scales, the product in the model's dtype.

Applied from outside the model, after it is loaded (``quantize_fp8``), as tensor parallel is. The
embedding, the norms, the LM head (the logits), the attention and retention kernels and the caches
stay in the model's dtype: fp8 is only where the FLOPs are, the projections.

Scales: a row ``r`` of ``A`` (a token's activations, or an output channel's weights) is stored as
``q = round_e4m3(r / s)`` with ``s = max|r| / 448`` (448: e4m3's largest finite value), so the row's
largest element maps to the top of the format and nothing overflows; ``A ~= q * s``. e4m3 keeps 3
mantissa bits: each element is within 2^-4 of itself (relative), and a dot product of ``K`` such
errors, independent in sign, about ``2^-4 / sqrt(3 K)`` of the product's scale.

``Float8Linear.reference`` is the same product computed plainly (both operands dequantized to
float32, a float32 matmul): the fast path equals it up to the order of its sums.
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import fused
from .kernels.fused.naive import E4M3, E4M3_MAX, quantize_rows_ref

# ``x`` (..., K) as float8 e4m3 ``q`` and a float32 scale per row ``s`` (..., 1), ``x ~= q * s``: one
# Triton kernel on CUDA (``kernels/fused``), the plain form elsewhere; the weights (quantized once)
# and ``Float8Linear.reference`` take the plain form.
quantize_rows = quantize_rows_ref


class Float8Linear(nn.Module):
    """An ``nn.Linear``'s weights in float8 with a scale per output channel; ``forward`` quantizes
    its input per row and calls ``torch._scaled_mm`` (the product and the bias in ``out_dtype``, the
    dtype of the linear it replaced). An output width that is not a multiple of 16 (gRet's fused
    projection: 4 d + its heads' decay gates) is padded with zero rows, cut off the product again.
    Inference only: the weights require no gradient."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype
        w, b = linear.weight.detach(), linear.bias
        pad = -self.out_features % 16
        if pad:
            w = torch.cat([w, w.new_zeros(pad, self.in_features)])
            b = None if b is None else torch.cat([b.detach(), b.new_zeros(pad)])
        q, s = quantize_rows(w)
        self.weight = nn.Parameter(q, requires_grad=False)            # (out + pad, in), e4m3
        self.register_buffer("scale", s.reshape(1, -1).contiguous())  # (1, out + pad), float32
        self.bias = None if b is None else nn.Parameter(b.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        qx, sx = fused.quantize_rows(x.reshape(-1, self.in_features))
        out = torch._scaled_mm(qx, self.weight.t(), scale_a=sx, scale_b=self.scale, bias=self.bias,
                               out_dtype=self.out_dtype)
        return self._cut(out).reshape(*lead, self.out_features)

    def _cut(self, out: torch.Tensor) -> torch.Tensor:
        """The padded product's first ``out_features`` columns, as a view (rows strided by the padded
        width: what reads it slices it further, as it slices the unpadded fused projection; a copy
        would move gRet's whole projection once more per layer and chunk)."""
        return out if out.shape[-1] == self.out_features else out[:, : self.out_features]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same quantized product, plainly: both operands dequantized, a float32 matmul."""
        qx, sx = quantize_rows(x.reshape(-1, self.in_features))
        w = self.weight.float() * self.scale.reshape(-1, 1)
        out = (qx.float() * sx) @ w.t()
        if self.bias is not None:
            out = out + self.bias.float()
        return self._cut(out.to(self.out_dtype)).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3, out {self.out_dtype}"


def fp8_problem(linear: nn.Linear) -> str:
    """Why a projection cannot go to ``torch._scaled_mm`` on a GPU (empty: it can): cuBLASLt's fp8
    GEMM needs both of the weight's dimensions to be multiples of 16; the output is padded to one,
    the input (the activations, copied at every call) is not."""
    return f"fp8 needs in_features a multiple of 16 ({linear.in_features})" if linear.in_features % 16 else ""


def quantize_fp8(model: nn.Module) -> list[str]:
    """Every ``nn.Linear`` of ``model`` but its LM head replaced, in place, by a ``Float8Linear``
    (ours: the blocks' projections, the fused ones included). Returns the names replaced. Raises
    ValueError (one line naming the first) where a projection's shape does not suit fp8, before
    changing anything."""
    head = getattr(model, "lm_head", None)
    todo = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and m is not head]
    for name, m in todo:
        if why := fp8_problem(m):
            raise ValueError(f"{name}: {why}")
    for name, m in todo:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, Float8Linear(m))
    return [name for name, _ in todo]
