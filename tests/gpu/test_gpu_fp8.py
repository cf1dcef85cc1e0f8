"""fp8 projections on the GPU (``yoco_core.quant``): ``torch._scaled_mm`` with row-wise scales at the
3B shapes equals the plain dequantized product, and a quantized shipped model's prefill and CUDA-graph
decode agree with its eager decode and its full forward (the needle floors in fp8 are the CPU
tests', tests/test_quant.py)."""
from __future__ import annotations

import pytest
import torch

from yoco_core import load_model
from yoco_core.graphs import CUDAGraphDecoder
from yoco_core.quant import Float8Linear, quantize_fp8

from .tolerance import rel_error

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("k,n", [(3200, 12800 + 16), (3200, 3200), (8640, 3200)])   # yoco-3b-like shapes
def test_scaled_mm_equals_the_dequantized_product(device, gen, k, n):
    lin = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, device=device, generator=gen) * 0.02)
    f8 = Float8Linear(lin)
    x = torch.randn(2, 300, k, device=device, generator=gen).to(torch.bfloat16)
    out = f8(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 300, n)
    exact = x.double() @ lin.weight.double().t()
    # the same quantized product in float32: only the output's bf16 rounding and the sums' order differ
    assert rel_error(out, f8.reference(x.float()).double()) < 1e-2
    assert rel_error(out, exact) < 0.05          # e4m3's rounding of both operands, averaged over k


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def test_a_quantized_shipped_model_decodes_through_its_graph_as_eagerly(device, name):
    model = load_model(name, device=device, dtype=torch.bfloat16)
    quantize_fp8(model)
    ids = torch.randint(0, 256, (2, 300), device=device, generator=torch.Generator(device=device).manual_seed(1))
    with torch.inference_mode():
        full = model(ids).float()
        last, cache = model.prefill(ids[:, :200], reserve=120)
        assert rel_error(last.float(), full[:, 199]) < 2e-2
        eager = [model.decode(ids[:, t:t + 1], cache)[0].float() for t in range(200, 240)]
        last, cache = model.prefill(ids[:, :200], reserve=120)
        graph = CUDAGraphDecoder(model, cache)
        steps = [graph(ids[:, t:t + 1]).float().clone() for t in range(200, 240)]
    assert rel_error(torch.cat(steps, 1), torch.cat(eager, 1)) < 1e-2
    assert rel_error(torch.cat(eager, 1), full[:, 200:240]) < 0.1
