"""fp8 projections (``yoco_core.quant``): the fast path (``torch._scaled_mm``, row-wise scales) equals
its plain reference on random inputs, its error against float64 is the quantization's, a quantized
model's cached paths still equal its full forward (per-token scales: a token's output depends on its
own row only), and the shipped models keep their needle floors in fp8."""
import math

import pytest
import torch
from torch import nn

import yoco_core.needle as nd
from conftest import small_model
from test_train import FLOORS, REGRESSION_GRID, _shipped
from yoco_core import load_model
from yoco_core.quant import E4M3, E4M3_MAX, Float8Linear, quantize_fp8, quantize_rows


def _linear(k, n, bias, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return lin


def test_rows_quantize_within_e4m3s_step_and_the_largest_maps_to_the_top():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 96, generator=g) * torch.logspace(-3, 3, 7).reshape(7, 1)
    x[2] = 0.0                                                     # a zero row stays zero
    q, s = quantize_rows(x)
    assert q.dtype == E4M3 and s.shape == (7, 1) and s.dtype == torch.float32
    back = q.float() * s
    assert torch.equal(back[2], torch.zeros(96))
    rows = [r for r in range(7) if r != 2]
    top = (q.float().abs().amax(-1))[rows]
    assert torch.equal(top, torch.full_like(top, E4M3_MAX))
    rel = ((back - x).abs() / x.abs().clamp_min(1e-30))[rows]
    big = x[rows].abs() >= s[rows] * 2 ** -6                           # e4m3's normal range (below: subnormals)
    assert rel[big].max() <= 2 ** -4 + 1e-6


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 128), (40, 256)])
def test_the_fast_path_equals_its_reference_and_its_error_is_the_quantizations(shape, bias):
    k, n = shape[-1], 48
    lin = _linear(k, n, bias)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    f8 = Float8Linear(lin)
    out = f8(x)
    assert out.shape == (*shape[:-1], n) and out.dtype == torch.float32
    torch.testing.assert_close(out, f8.reference(x), rtol=1e-5, atol=1e-5)
    exact = x.double() @ lin.weight.double().t() + (lin.bias.double() if bias else 0)
    err = (out.double() - exact).abs().max() / exact.abs().max()
    # both operands within 2^-4 per element, the errors of a K-term sum independent: ~2^-4 sqrt(2/(3K))
    assert 1e-4 < err < 4 * 2 ** -4 * math.sqrt(2 / (3 * k)) * 3, float(err)


def test_bf16_models_get_bf16_products():
    lin = _linear(64, 32, True, dtype=torch.bfloat16)
    f8 = Float8Linear(lin)
    x = torch.randn(4, 64).to(torch.bfloat16)
    out = f8(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), f8.reference(x).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
def test_every_projection_but_the_head_is_quantized(kind):
    model = small_model(kind)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"]
    assert quantize_fp8(model) == linears and linears
    assert not [n for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"]
    assert type(model.lm_head) is nn.Linear and model.embed.weight.dtype == torch.float32
    assert all(not p.requires_grad for m in model.modules() if isinstance(m, Float8Linear) for p in m.parameters())


def test_a_shape_fp8_cannot_take_is_refused_before_anything_changes():
    model = small_model("transformer", ffn_dim=120)                  # 120 is not a multiple of 16
    with pytest.raises(ValueError, match=r"down_proj: fp8 needs in_features a multiple of 16 \(120\)"):
        quantize_fp8(model)
    assert not any(isinstance(m, Float8Linear) for m in model.modules())


def test_an_output_width_off_16_is_padded_and_cut():
    lin = _linear(64, 52, True)                                       # 52 = 3 x 16 + 4
    f8 = Float8Linear(lin)
    assert f8.weight.shape == (64, 64) and f8.scale.shape == (1, 64) and f8.bias.shape == (64,)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    out = f8(x)
    assert out.shape == (5, 52) and out.stride() == (64, 1)          # a view of the padded product: no copy
    torch.testing.assert_close(out, f8.reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, lin(x), rtol=0.1, atol=0.1)


def _ids(B, T, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "yoco-nope", "transformer"])
def test_a_quantized_models_cached_paths_equal_its_full_forward(kind):
    """Prefill computes each token's rows as the full forward does: equal. Chunked prefill sums its
    attention and gated retention in another order (4e-6 to 7e-6 from the full forward unquantized), and
    a YOCO's decoding step computes its self-decoder otherwise (gRet's recurrent form, the SWA ring), so
    float32 rounding of about 1e-6 before a quantizer can move a value across an e4m3 step (one such
    flip moved yoco-gret's last logits by 0.28 when the scales changed by an ulp): these are held to a
    fifth of what quantizing does to the full forward (a random model of std 0.2 amplifies every
    difference layer by layer; the Transformer's decoding step too is 2e-5 from its full forward
    unquantized: with the scales an ulp apart, four seeds of eight flipped a value)."""
    model = small_model(kind).requires_grad_(False)
    ids = _ids(2, 50)
    plain = model(ids)
    quantize_fp8(model)
    full = model(ids)
    quantized = float((full - plain).abs().max())
    assert torch.isfinite(full).all() and quantized > 1e-2
    last, cache = model.prefill(ids[:, :21])
    torch.testing.assert_close(last, full[:, 20], rtol=1e-4, atol=1e-4)
    steps = torch.cat([model.decode(ids[:, t:t + 1], cache)[0] for t in range(21, 50)], 1)
    step_err = float((steps - full[:, 21:]).abs().max())
    assert step_err < 0.2 * quantized, (step_err, quantized)
    last, _ = model.prefill(ids, chunk_size=16)
    chunked_err = float((last - full[:, -1]).abs().max())
    assert chunked_err < 0.2 * quantized, (chunked_err, quantized)


# Measured on the CPU (fp32 products), 2026-12-02: the relative L2 distance of fp8 logits from the
# unquantized over 300 tokens; yoco-tiny's gated retention integrates every token's rounding into
# its state (quantizing its four gRet projections alone, q | k | v | gates, moves the logits 24%,
# any other group of projections 1-12%), and at dim 256 a product averages only 256 roundings.
FP8_LOGITS = {"yoco-tiny": 0.27, "yoco-swa-tiny": 0.05, "transformer-tiny": 0.07}
FP8_SHORT = {"yoco-tiny": "multi-value 4 @ 2048 drops from 0.83 to 0.75 in fp8 (one value of 12)"}


def _fp8_cases():
    names = _shipped() or ["none shipped"]
    return [pytest.param(n, marks=pytest.mark.xfail(reason=FP8_SHORT[n], strict=True)) if n in FP8_SHORT else n
            for n in names]


@pytest.mark.parametrize("name", _fp8_cases())
def test_shipped_models_keep_their_floors_in_fp8(name):
    """The regression grid of the shipped models (tests/test_train.py) with every projection in fp8
    (the CPU, fp32 products): the logits within their measured distance (FP8_LOGITS, with 10% room)
    of the unquantized ones, and no needle cell below its floor (yoco-tiny: one is, FP8_SHORT)."""
    if name == "none shipped":
        pytest.skip("no trained weights shipped")
    model = load_model(name, device="cpu", dtype=torch.float32).requires_grad_(False)
    ids = _ids(1, 300)
    plain = model(ids)
    quantize_fp8(model)
    off = float((model(ids) - plain).norm() / plain.norm())
    assert off < 1.1 * FP8_LOGITS[name], off
    scores = [sum(nd.run_cell(model, ctx, depth, task, n, seed=7).score for depth in (0.0, 0.5, 1.0)) / 3
              for task, n, ctx in REGRESSION_GRID]
    low = [f"{t} {n} @ {c}: {s:.2f} < {f}" for (t, n, c), s, f in zip(REGRESSION_GRID, scores, FLOORS[name])
           if s < f - 1e-9]
    assert not low, f"{name} in fp8 scores below its floors: " + "; ".join(low)


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
def test_the_graph_safe_step_of_a_quantized_model_equals_its_decode(kind):
    """The step a CUDA graph captures (StaticDecoder, eagerly on the CPU) with fp8 projections gives
    what the model's own decode gives: quantizing per token needs no host sync, no shape change."""
    from yoco_core.graphs import StaticDecoder

    model = small_model(kind).requires_grad_(False)
    ids = _ids(2, 40)

    def decoded():
        _, cache = model.prefill(ids[:, :20], reserve=24)
        return torch.cat([model.decode(ids[:, t:t + 1], cache)[0] for t in range(20, 40)], 1)

    plain = decoded()
    quantize_fp8(model)
    want = decoded()
    _, cache = model.prefill(ids[:, :20], reserve=24)
    step = StaticDecoder(model, cache)
    got = torch.cat([step(ids[:, t:t + 1]).clone() for t in range(20, 40)], 1)
    # the graph-safe step reads the whole cache buffer (positions past the current one masked): sums in
    # another order (1e-5 apart unquantized), so a float32 rounding can flip an e4m3 step (see the test
    # above); held to a fifth of fp8's own effect
    err, quantized = float((got - want).abs().max()), float((want - plain).abs().max())
    assert quantized > 1e-2 and err < 0.2 * quantized, (err, quantized)
