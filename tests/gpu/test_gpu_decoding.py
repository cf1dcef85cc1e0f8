"""The cached paths on the GPU against the full forward: chunked prefill, then eager decoding
(random weights) or CUDA-graph decoding (the shipped models), in bf16 with the fast kernels. The
reference is the full forward in float64; the bound is k times the error of the full forward in
bf16 on the plain PyTorch path (``tolerance.py``), so a wrong cache shows up as well as a kernel
that loses precision."""
from __future__ import annotations

import copy

import pytest
import torch

from yoco_core import build_model, get_config, load_model
from yoco_core.graphs import CUDAGraphDecoder, make_decoder
from yoco_core.kernels import backend
from yoco_core.kernels.gret import fla_available

from .tolerance import MODEL_K, assert_as_accurate

pytestmark = pytest.mark.gpu

PLAIN = dict(fused="torch", decode="torch", gret="torch")     # every family's PyTorch form


@torch.inference_mode()
def _full_forwards(model, ids, lo: int, hi: int):
    """Logits of positions ``[lo, hi)`` from the full forward: in float64 (the reference, on the
    model's own bf16 weights) and in the model's dtype on the plain PyTorch path."""
    with backend.override(**PLAIN):
        plain = model(ids)[:, lo:hi].float()
        ref_model = copy.deepcopy(model).to(torch.float64)
        ref = ref_model(ids)[:, lo:hi]
    del ref_model
    return plain, ref


def _argmax_agreement(x, ref) -> float:
    return float((x.argmax(-1) == ref.argmax(-1)).float().mean())


def _check(fast, plain, ref, what):
    e_fast, e_plain = assert_as_accurate(fast, plain, ref, MODEL_K, what=what)
    print(f"{what}: rel error {e_fast:.2e} (plain PyTorch {e_plain:.2e}), argmax agrees "
          f"{_argmax_agreement(fast, ref):.3f} ({_argmax_agreement(plain, ref):.3f})")


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def test_chunked_prefill_and_eager_decoding(device, name):
    """Random weights, a 64-token window: 300 tokens prefilled in chunks of 128, then 199 decoded
    one at a time with ``model.decode`` (the fused kernels and split-KV decoding; gated retention
    on its PyTorch form: fla-core has its own tests)."""
    torch.manual_seed(0)
    model = build_model(get_config(name).replace(window=64), device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, 256, (2, 500), device=device)
    with backend.override(gret="torch"):
        last, cache = model.prefill(ids[:, :300], chunk_size=128)
        steps = [last[:, None].float()]
        for t in range(300, 499):
            steps.append(model.decode(ids[:, t:t + 1], cache)[0].float())
    plain, ref = _full_forwards(model, ids, 299, 499)
    _check(torch.cat(steps, 1), plain, ref, f"{name} bf16 prefill + decode")


@pytest.mark.parametrize("name,gret", [
    ("transformer-tiny", "torch"),
    ("yoco-tiny", "torch"),
    ("yoco-tiny", "fla"),    # against float64: 7.07e-2, the bf16 full forward 7.09e-2 (H200, 2026-12-01)
])
def test_chunked_prefill_and_graph_decoding_of_the_shipped_models(device, name, gret):
    """The shipped weights in bf16: 2000 tokens prefilled in chunks of 512, then 999 tokens
    decoded by the CUDA graph (fused kernels, the in-place gRet step, split-KV attention), with
    gated retention's prefill on ``gret`` (the PyTorch chunkwise form or fla-core)."""
    if gret == "fla" and not fla_available():
        pytest.skip("fla-core is not installed")
    torch.manual_seed(0)
    model = load_model(name, device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, 256, (2, 3000), device=device)
    with torch.inference_mode(), backend.override(gret=gret):
        last, cache = model.prefill(ids[:, :2000], chunk_size=512, reserve=1000)
        decoder = make_decoder(model, cache)
        assert isinstance(decoder, CUDAGraphDecoder)
        steps = [last.float()]
        for t in range(2000, 2999):
            steps.append(decoder(ids[:, t:t + 1])[:, -1].float().clone())   # the graph's buffer is reused
    plain, ref = _full_forwards(model, ids, 1999, 2999)
    _check(torch.stack(steps, 1), plain, ref, f"{name} bf16 prefill ({gret}) + {type(decoder).__name__}")


def test_swa_prefill_and_graph_decoding(device):
    """The SWA YOCO (random weights, window 64): 300 tokens prefilled in chunks of 128 (whole
    windows on cuDNN), then 199 tokens decoded by the CUDA graph over the ring (written in place
    at slot ``at % window``, attended by the split-KV kernel)."""
    torch.manual_seed(0)
    model = build_model(get_config("yoco-swa-tiny").replace(window=64), device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, 256, (2, 500), device=device)
    with torch.inference_mode():
        last, cache = model.prefill(ids[:, :300], chunk_size=128, reserve=200)
        decoder = make_decoder(model, cache)
        assert isinstance(decoder, CUDAGraphDecoder)
        steps = [last.float()]
        for t in range(300, 499):
            steps.append(decoder(ids[:, t:t + 1])[:, -1].float().clone())
    plain, ref = _full_forwards(model, ids, 299, 499)
    _check(torch.stack(steps, 1), plain, ref, "yoco-swa-tiny bf16 prefill + CUDAGraphDecoder")
