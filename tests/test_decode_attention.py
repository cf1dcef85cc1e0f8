"""The split-KV Triton decode kernel against the float64 reference, run by Triton's interpreter on
the CPU.

The interpreter needs TRITON_INTERPRET=1 before triton itself is first imported (triton's own
``tl.cdiv`` / ``tl.max`` / ``tl.sum`` are jit functions decorated at import), and the test session
imports triton early. So unless the whole run already has TRITON_INTERPRET=1, the one test
``test_interpreted_suite`` reruns this file in a subprocess with it set, and the kernel tests are
skipped here; in the subprocess they run, and the wrapper fails unless every one of them passed.
Every kernel test checks that the kernels are interpreted Triton functions and that the launch
counter moved, so a silent fallback to the reference would fail.

Inputs random (never zeros). Tolerance: max abs error / max(1, max |reference|) < 1e-4 for float32,
< 5e-3 for float16, < 2e-2 for bfloat16 (inputs rounded to the dtype before the reference runs).
"""
import pytest
import torch

from conftest import assert_close_scaled as _close, interpreted_module, run_interpreted
from yoco_core.kernels import backend
from yoco_core.kernels import decode_attention as da
from yoco_core.kernels.decode_attention import decode_attention_ref

MOD = "yoco_core.kernels.decode_attention.split_kv"
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
N_KERNEL_TESTS = 18   # tests using the ``sk`` fixture (parametrised cases counted)


def test_interpreted_suite():
    run_interpreted(__file__, N_KERNEL_TESTS + 1)


@pytest.fixture(scope="module")
def sk():
    return interpreted_module(MOD, "_split_kernel", "_combine_kernel")


def _inputs(B, H, H_kv, C, D, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=g)
    k = torch.randn(B, H_kv, C, D, generator=g) * 1.5   # spread the scores: a peaked softmax
    v = torch.randn(B, H_kv, C, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _ref64(q, k, v, length, **kw):
    return decode_attention_ref(q.double(), k.double(), v.double(), length, dtype=torch.float64, **kw)


def _explicit(q, k, v, L, scale, window, softcap):
    """The windowed, capped attention of one query per row written out directly in float64."""
    B, H, D = q.shape
    rep = H // k.shape[1]
    kk, vv = k.double().repeat_interleave(rep, 1)[:, :, :L], v.double().repeat_interleave(rep, 1)[:, :, :L]
    s = torch.einsum("bhd,bhnd->bhn", q.double(), kk) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    pos = torch.arange(L)
    s = s.masked_fill((pos < L - window) if window else torch.zeros(L, dtype=torch.bool), float("-inf"))
    return torch.einsum("bhn,bhnd->bhd", s.softmax(-1), vv)


@pytest.mark.parametrize("scale,window,softcap", [(0.3, 0, 0.0), (None, 23, 0.0), (0.2, 70, 5.0)])
def test_window_scale_and_softcap(sk, scale, window, softcap):
    """Gemma / Mistral decode settings: a logit scale, a sliding window of the last ``window``
    positions and soft-capped logits, in the kernel and the reference alike, against the
    attention written out; the positions before the window are poisoned and never read."""
    q, k, v = _inputs(2, 8, 2, 256, 32, seed=int(window) + 7)
    L = 200
    want = _explicit(q, k, v, L, 32 ** -0.5 if scale is None else scale, window, softcap)
    if window:
        k[:, :, : L - window], v[:, :, : L - window] = float("nan"), float("nan")
    kw = dict(scale=scale, window=window, softcap=softcap)
    _close(_ref64(q, k, v, L, **kw), want, 1e-10)
    _close(_run(sk, q, k, v, torch.tensor([L, L]), **kw), want, 1e-4)


def _run(sk, *args, **kwargs):
    before = sk.CALLS["triton"]
    out = sk.decode_attention_triton(*args, **kwargs)
    assert sk.CALLS["triton"] == before + 1
    return out


@pytest.mark.parametrize("H,H_kv,D", [(4, 2, 16), (6, 2, 32), (8, 1, 16)])
@pytest.mark.parametrize("C,lengths", [(64, (1, 17, 64)), (300, (1, 17, 300))])
def test_matches_reference_fp32(sk, H, H_kv, D, C, lengths):
    q, k, v = _inputs(2, H, H_kv, C, D, seed=H * 1000 + C)
    for L in lengths:
        out = _run(sk, q, k, v, torch.tensor([L], dtype=torch.int32))
        _close(out, _ref64(q, k, v, L), 1e-4)


def test_per_row_lengths_and_length_forms(sk):
    q, k, v = _inputs(3, 6, 2, 200, 16, seed=7)
    lens = torch.tensor([17, 200, 1], dtype=torch.int64)
    _close(_run(sk, q, k, v, lens), _ref64(q, k, v, lens), 1e-4)
    ref = _ref64(q, k, v, 130)
    for length in (130, torch.tensor(130), torch.tensor([130], dtype=torch.int64)):
        _close(_run(sk, q, k, v, length), ref, 1e-4)
    # an empty row gives zeros (no NaN), as in the reference
    lens0 = torch.tensor([0, 5, 0], dtype=torch.int32)
    out0 = _run(sk, q, k, v, lens0)
    assert torch.equal(out0[0], torch.zeros_like(out0[0]))
    _close(out0, _ref64(q, k, v, lens0), 1e-4)
    # a length past the capacity is clamped to it, as in the reference
    _close(_run(sk, q, k, v, torch.tensor([250])), _ref64(q, k, v, 200), 1e-4)


def test_positions_at_and_past_length_are_never_read(sk):
    q, k, v = _inputs(2, 6, 2, 160, 16, seed=11)
    lens = torch.tensor([37, 100], dtype=torch.int32)
    clean = _run(sk, q, k, v, lens, 4)
    kd, vd = k.clone(), v.clone()
    for b, L in enumerate(lens.tolist()):
        kd[b, :, L:] = float("nan")
        vd[b, :, L:] = 1e30
    dirty = _run(sk, q, kd, vd, lens, 4)
    assert torch.isfinite(dirty).all()
    assert torch.equal(dirty, clean)
    _close(dirty, _ref64(q, k, v, lens), 1e-4)


def test_number_of_splits_does_not_change_the_result(sk):
    q, k, v = _inputs(2, 8, 1, 300, 16, seed=5)
    lens = torch.tensor([17, 290], dtype=torch.int32)
    ref = _ref64(q, k, v, lens)
    outs = [_run(sk, q, k, v, lens, s) for s in (1, 2, 3, 7, 16)]   # 16 > tiles of row 0: empty splits
    for o in outs:
        _close(o, ref, 1e-4)
        assert (o - outs[0]).abs().max() < 1e-5
    assert sk.choose_num_splits(2, 1, 300) == 2       # capped by the capacity (2 x 4 tiles)
    assert sk.choose_num_splits(1, 8, 1 << 20) == 66  # 132 SMs x 4 waves / 8 heads
    assert sk.choose_num_splits(16, 8, 1 << 18) == 5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(sk, dtype):
    q, k, v = _inputs(2, 6, 2, 150, 32, seed=3, dtype=dtype)
    out = _run(sk, q, k, v, torch.tensor([150, 41]))
    assert out.dtype == dtype
    _close(out, _ref64(q, k, v, torch.tensor([150, 41])), TOL[dtype])


def test_head_dim_64_and_group_of_four(sk):
    q, k, v = _inputs(1, 8, 2, 96, 64, seed=9)
    _close(_run(sk, q, k, v, torch.tensor([90])), _ref64(q, k, v, 90), 1e-4)


def test_model_shape_24_over_8_heads_dim_128(sk):
    """The YOCO decode shape (G = 3, D = 128) at a small capacity, with the default split rule."""
    q, k, v = _inputs(1, 24, 8, 200, 128, seed=13, dtype=torch.bfloat16)
    _close(_run(sk, q, k, v, torch.tensor([173])), _ref64(q, k, v, 173), TOL[torch.bfloat16])


def test_views_and_preallocated_buffers_replay(sk):
    """Strided q / out views, and the same out + workspace reused while the length tensor is
    mutated in place: what a CUDA-graph replay does."""
    B, H, H_kv, C, D = 2, 6, 2, 128, 16
    _, k, v = _inputs(B, H, H_kv, C, D, seed=21)
    qkv = torch.randn(B, H, 3 * D, generator=torch.Generator().manual_seed(2))
    q = qkv[:, :, D:2 * D]                             # [B, H, D], strides (3DH, 3D, 1)
    assert not q.is_contiguous()
    out_store = torch.full((B, D, H), float("nan"))
    out = out_store.transpose(1, 2)                    # [B, H, D] with strides (D*H, 1, H)
    ws = sk.make_workspace(B, H, D, 3, q.device)
    length = torch.zeros(1, dtype=torch.int32)
    for L in (1, 5, 64, 65, 128):
        length.fill_(L)
        res = _run(sk, q, k, v, length, out=out, workspace=ws)
        assert res is out
        _close(out, _ref64(q, k, v, L), 1e-4)


def test_dispatcher_uses_triton_only_when_asked(sk):
    q, k, v = _inputs(1, 4, 2, 40, 16, seed=1)
    ref = _ref64(q, k, v, 33)
    before = sk.CALLS["triton"]
    with backend.override(decode="triton"):
        assert da.backend_for(q) == "triton"
        _close(da.decode_attention(q, k, v, torch.tensor([33])), ref, 1e-4)
        assert sk.CALLS["triton"] == before + 1
        with backend.override(decode="auto"):
            assert da.backend_for(q) == "torch"        # CPU tensors, not asked: the reference
            _close(da.decode_attention(q, k, v, 33), ref, 1e-4)
            assert sk.CALLS["triton"] == before + 1
        assert da.backend_for(q) == "triton"           # the outer choice is back


def test_reference_matches_explicit_attention():
    """The reference itself against attention_ref on the sliced buffer (independent code)."""
    from yoco_core.kernels.attention import attention_ref
    q, k, v = _inputs(2, 6, 2, 50, 16, seed=4)
    out = decode_attention_ref(q, k, v, 31)
    ref = attention_ref(q[:, :, None], k[:, :, :31], v[:, :, :31])[:, :, 0]
    _close(out, ref.double(), 1e-5)
