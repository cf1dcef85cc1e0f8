"""The fused Triton kernels (``kernels/fused``) against their PyTorch references, run by Triton's
interpreter on the CPU, and a whole model through them against the reference path.

As in ``test_decode_attention.py``: the interpreter needs TRITON_INTERPRET=1 before triton is first
imported, so ``test_interpreted_suite`` reruns this file in a subprocess with it (and
``YOCO_KERNEL_FUSED=triton``) set and fails unless every kernel test passed there. Every kernel
test checks the launch counter moved, so a silent fallback to the reference would fail.

Inputs random (never zeros), at odd sizes (rows not a power of two, strided slices of a wider
tensor, as the models pass them). Tolerance: max abs error / max(1, max |reference|) below 1e-5 for
float32 and 4e-2 for bfloat16: a few units in the last place, because Triton's interpreter
rounds float32 to bfloat16 toward zero (the GPU and PyTorch round to nearest), and a chain such as
norm -> gate -> product rounds three times. On the GPU the kernels agree with the references to
one unit in the last place (``tests/gpu/test_gpu_kernels.py``).
"""
import pytest
import torch

from conftest import assert_close_scaled, interpreted_module, run_interpreted
from yoco_core.kernels import backend, fused
from yoco_core.kernels.fused import naive

MOD = "yoco_core.kernels.fused.triton_kernels"
TOL = {torch.float32: 1e-5, torch.bfloat16: 4e-2}
N_KERNEL_TESTS = 18


def test_interpreted_suite():
    run_interpreted(__file__, N_KERNEL_TESTS, YOCO_KERNEL_FUSED="triton")


@pytest.fixture(scope="module")
def tk():
    return interpreted_module(MOD, "_rms_norm_kernel", "_rope_kernel", "_gret_decode_kernel")


def _close(out, ref, dtype):
    """``dtype``: the inputs' dtype, which sets the tolerance (a float32 state updated from bf16
    keys carries their rounding)."""
    assert out.dtype == ref.dtype
    assert_close_scaled(out, ref, TOL[dtype])


def _rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _counted(tk, fn, *args, **kw):
    before = tk.CALLS["triton"]
    out = fn(*args, **kw)
    assert tk.CALLS["triton"] > before, "the Triton kernel did not run"
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_attention(tk, dtype):
    """Two partial attentions merged by their log-sum-exp, from strided views (cuDNN's layout)
    into a slice of a wider output, as the chunked causal attention writes it."""
    o1 = _rand(2, 5, 3, 16, dtype=dtype, seed=1).transpose(1, 2)          # [2, 3, 5, 16], strided
    o2 = _rand(2, 3, 5, 16, dtype=dtype, seed=2)
    l1, l2 = _rand(2, 3, 5, seed=3, scale=4.0), _rand(2, 3, 5, seed=4, scale=4.0)
    wide = torch.zeros(2, 3, 9, 16, dtype=dtype)
    _counted(tk, tk.merge_attention, o1, l1, o2, l2, out=wide[:, :, 2:7])
    _close(wide[:, :, 2:7], naive.merge_attention_ref(o1, l1, o2, l2), dtype)
    assert wide[:, :, :2].abs().max() == 0 and wide[:, :, 7:].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(tk, dtype):
    wide = _rand(2, 7, 160, dtype=dtype, seed=1, scale=3.0)
    x = wide[..., 20:116]                                  # strided rows of 96 (not a power of two)
    w = _rand(96, dtype=dtype, seed=2) + 1.0
    _close(_counted(tk, fused.rms_norm, x, w, 1e-5), naive.rms_norm_ref(x, w, 1e-5), dtype)
    _close(_counted(tk, fused.rms_norm, x, None, 1e-5), naive.rms_norm_ref(x, None, 1e-5), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_split_from_a_fused_projection(tk, dtype):
    B, n, HQ, HK, D = 2, 5, 3, 2, 16
    p = _rand(B, n, (HQ + HK) * D + 24, dtype=dtype, seed=4)     # q | k | something else
    x = p[..., : (HQ + HK) * D].view(B, n, HQ + HK, D)
    cos, sin = _rand(n, D, dtype=dtype, seed=5), _rand(n, D, dtype=dtype, seed=6)
    q, k = _counted(tk, fused.rope, x, cos, sin, n_first=HQ)
    rq, rk = naive.rope_ref(x, cos, sin, n_first=HQ)
    assert q.is_contiguous() and k.is_contiguous()
    _close(q, rq, dtype)
    _close(k, rk, dtype)
    one = _counted(tk, fused.rope, x[:, :, :HQ], cos, sin)
    _close(one, naive.rope_ref(x[:, :, :HQ], cos, sin), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_with_the_values_beside(tk, dtype):
    """q | k rotated and v copied out of one fused projection: three contiguous tensors."""
    B, n, H, D = 2, 5, 3, 16
    p = _rand(B, n, 3 * H * D + 24, dtype=dtype, seed=17)      # q | k | v | something else
    x = p[..., : 3 * H * D].view(B, n, 3 * H, D)
    cos, sin = _rand(n, D, dtype=dtype, seed=18), _rand(n, D, dtype=dtype, seed=19)
    q, k, v = _counted(tk, fused.rope, x, cos, sin, n_first=H, n_plain=H)
    rq, rk, rv = naive.rope_ref(x, cos, sin, n_first=H, n_plain=H)
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    _close(q, rq, dtype)
    _close(k, rk, dtype)
    assert torch.equal(v, p[..., 2 * H * D: 3 * H * D].view(B, n, H, D)) and torch.equal(rv, v)
    with pytest.raises(ValueError, match="n_first"):
        fused.rope(x, cos, sin, n_plain=H)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul(tk, dtype):
    gu = _rand(3, 4, 2 * 40, dtype=dtype, seed=7, scale=2.0)
    _close(_counted(tk, fused.silu_mul, gu), naive.silu_mul_ref(gu), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_norm_gate(tk, dtype):
    B, n, H, D = 2, 3, 4, 16
    o = _rand(B, n, H, D, dtype=dtype, seed=8, scale=2.0)
    p = _rand(B, n, 3 * H * D, dtype=dtype, seed=9)
    g = p[..., H * D: 2 * H * D]                                   # a strided slice, as in the model
    _close(_counted(tk, fused.head_norm_gate, o, g, 1e-5), naive.head_norm_gate_ref(o, g, 1e-5), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_place", [False, True])
def test_gret_decode(tk, dtype, in_place):
    B, H, D = 2, 3, 16
    d = H * D
    p = _rand(B, 1, 4 * d + H, dtype=dtype, seed=10)
    cos, sin = _rand(1, D, dtype=dtype, seed=11), _rand(1, D, dtype=dtype, seed=12)
    state = _rand(B, H, D, D, seed=13)
    ref_o, ref_s = naive.gret_decode_ref(p, cos, sin, state.clone(), H, D ** -0.5, 16.0, 1e-5)
    s_in = state.clone()
    o, s = _counted(tk, fused.gret_decode, p, cos, sin, s_in, H, D ** -0.5, 16.0, 1e-5,
                    state_out=s_in if in_place else None)
    _close(o, ref_o, dtype)
    _close(s, ref_s, dtype)
    if in_place:
        assert s.data_ptr() == s_in.data_ptr()
    else:
        assert torch.equal(s_in, state)                             # the input state untouched


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer", "yoco-nope"])
def test_model_through_the_kernels(tk, kind):
    """A small model's full forward, chunked prefill and decoding steps with the fused kernels equal
    the same model on the reference path; and decoding still equals the full forward."""
    from conftest import small_model

    model = small_model(kind)
    ids = torch.randint(0, 300, (2, 21), generator=torch.Generator().manual_seed(0))
    before = tk.CALLS["triton"]
    with torch.inference_mode():
        full = model(ids)
        logits, cache = model.prefill(ids[:, :17], chunk_size=8)
        steps = [logits]
        for t in range(17, 21):
            out, cache = model.decode(ids[:, t: t + 1], cache)
            steps.append(out[:, -1])
    after = tk.CALLS["triton"]
    assert after > before
    with backend.override(fused="torch"), torch.inference_mode():
        ref_full = model(ids)
    assert tk.CALLS["triton"] == after                      # the reference path: no launch
    _close(full, ref_full, torch.float32)
    for i, s in enumerate(steps[:-1]):
        torch.testing.assert_close(s, full[:, 16 + i], rtol=1e-4, atol=1e-4)


def test_odd_head_sizes_run_the_reference(tk):
    """A head size the kernels cannot tile (100, as OpenLLaMA-3B's) takes the reference path."""
    x = _rand(1, 3, 2, 100, seed=14)
    cos, sin = _rand(3, 100, seed=15), _rand(3, 100, seed=16)
    before = tk.CALLS["triton"]
    out = fused.rope(x, cos, sin)
    assert tk.CALLS["triton"] == before
    _close(out, naive.rope_ref(x, cos, sin), torch.float32)
