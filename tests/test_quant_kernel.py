"""The fused fp8 row quantizer (``kernels/fused``'s ``quantize_rows``) against its reference, run by
Triton's interpreter on the CPU (``test_interpreted_suite`` reruns this file with
``TRITON_INTERPRET=1`` and ``YOCO_KERNEL_FUSED=triton``, as ``test_fused_kernels.py`` does); every
kernel test checks the launch counter moved. The scales are the same float32 quotient on both
sides and the rounding to e4m3 is to nearest even on both, so the outputs agree exactly."""
import pytest
import torch

from conftest import interpreted_module, run_interpreted
from yoco_core.kernels.fused import naive

MOD = "yoco_core.kernels.fused.triton_kernels"
N_KERNEL_TESTS = 7


def test_interpreted_suite():
    run_interpreted(__file__, N_KERNEL_TESTS, YOCO_KERNEL_FUSED="triton")


@pytest.fixture(scope="module")
def tk():
    return interpreted_module(MOD, "_quantize_rows_kernel")


def _rows(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.logspace(-3, 2, shape[-2])[:, None]   # rows of every scale
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K,block", [(200, 4096), (200, 64)])       # one block, and a row of 4 blocks
def test_quantize_rows_equals_the_reference(tk, dtype, K, block):
    x = _rows((2, 13, K + 24), dtype, seed=K + block)[..., 24:]        # a strided slice, as a projection's input
    before = tk.CALLS["triton"]
    q, s = tk.quantize_rows(x, block=block)
    assert tk.CALLS["triton"] == before + 1, "the Triton kernel did not run"
    rq, rs = naive.quantize_rows_ref(x)
    assert q.dtype == naive.E4M3 and q.shape == x.shape and s.shape == (2, 13, 1)
    assert torch.equal(s, rs)
    assert torch.equal(q.float(), rq.float())
    assert (q.float().abs().amax(-1) == naive.E4M3_MAX).all()        # each row's largest at the top of e4m3


def test_every_e4m3_value_and_every_tie_between_two_rounds_as_torch_casts(tk):
    """A row whose largest magnitude is 448 has scale 1: each e4m3 value, subnormals included, stays
    itself, and each midpoint between neighbours goes to the even one (as ``torch.to`` rounds)."""
    vals = torch.arange(256, dtype=torch.uint8).view(naive.E4M3).float()
    vals = vals[torch.isfinite(vals) & (vals >= 0)].unique().sort().values          # 0 .. 448
    mids = (vals[1:] + vals[:-1]) / 2
    row = torch.cat([vals, mids, -vals, -mids, vals[1:] * 0.999, -mids * 1.001])[None]
    q, s = tk.quantize_rows(row, block=256)
    assert s.item() == 1.0
    assert torch.equal(q.float(), naive.quantize_rows_ref(row)[0].float())
    assert torch.equal(q.float()[0, : len(vals)], vals)


def test_a_zero_row_gets_the_tiny_scale_and_zeros(tk):
    x = _rows((5, 48), torch.float32, seed=3)
    x[2] = 0
    q, s = tk.quantize_rows(x)
    assert s[2, 0] == naive.FP8_TINY and not q[2].float().any()
    assert torch.equal(q.float(), naive.quantize_rows_ref(x)[0].float())


def test_float8_linear_quantizes_its_input_through_the_kernel(tk):
    """The layer's forward goes through the fused quantizer (the launch counter moves) and equals
    the same product done plainly (``Float8Linear.reference``)."""
    from yoco_core.quant import Float8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 40, bias=True)
    f8 = Float8Linear(lin)
    x = torch.randn(3, 7, 64)
    before = tk.CALLS["triton"]
    with torch.inference_mode():
        out = f8(x)
    assert tk.CALLS["triton"] > before
    torch.testing.assert_close(out, f8.reference(x), rtol=1e-5, atol=1e-5)
