"""Where the time goes: kernel breakdowns of the 3B decode step and prefill, and the attention
backends SDPA offers at the 3B head shape. A diagnostic for the GPU machine, not a benchmark.

    python3 scripts/gpu_diagnose.py [--parts attn,split,gemm,residual,gla,decode,prefill4k,prefill]
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from yoco_core import build_model, get_config
from yoco_core.graphs import StaticDecoder, make_decoder
from yoco_core.perf.hardware import Clock, median_seconds

DEV = "cuda"


def ms(fn, reps=10, warm=2):
    """The median milliseconds of ``fn`` over ``reps`` runs after ``warm`` (CUDA events)."""
    return median_seconds(Clock(DEV), fn, reps, warm) * 1e3


def random_cache(m, ctx, reserve=64):
    """A batch-1 cache of ``ctx`` random positions: decode steps without paying for a prefill."""
    cache = m.new_cache(1, ctx + reserve)
    cache.fill_random(ctx, torch.Generator(device=DEV).manual_seed(0))
    return cache


def kernels(prof, steps, n=22, title=""):
    ev = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in ev)
    count = sum(e.count for e in ev)
    print(f"-- {title}: {count / steps:.0f} kernels/step, {total / steps / 1e3:.3f} ms GPU/step")
    for e in sorted(ev, key=lambda e: -e.self_device_time_total)[:n]:
        print(f"   {e.self_device_time_total / steps / 1e3:8.3f} ms  x{e.count // steps:<4} {e.key[:110]}")


def attn():
    torch.manual_seed(0)
    for T in (32768, 131072):
        q = torch.randn(1, 24, T, 128, device=DEV, dtype=torch.bfloat16)
        k = torch.randn(1, 8, T, 128, device=DEV, dtype=torch.bfloat16)
        v = torch.randn(1, 8, T, 128, device=DEV, dtype=torch.bfloat16)
        ke, ve = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
        flops = 4 * 128 * 24 * T * T / 2
        cases = {
            "flash gqa": (SDPBackend.FLASH_ATTENTION, k, v, True),
            "cudnn gqa": (SDPBackend.CUDNN_ATTENTION, k, v, True),
            "cudnn expanded": (SDPBackend.CUDNN_ATTENTION, ke, ve, False),
            "flash expanded": (SDPBackend.FLASH_ATTENTION, ke, ve, False),
            "efficient gqa": (SDPBackend.EFFICIENT_ATTENTION, k, v, True),
            "default gqa": (None, k, v, True),
        }
        for name, (b, kk, vv, gqa) in cases.items():
            def fn():
                if b is None:
                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
                with sdpa_kernel([b]):
                    return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
            try:
                t = ms(fn, reps=3, warm=1)
                print(f"attn T={T // 1024}K {name:<15} {t:8.2f} ms {flops / t / 1e9:6.0f} TFLOP/s", flush=True)
            except Exception as e:
                print(f"attn T={T // 1024}K {name:<15} {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        if T == 32768:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                r = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).float()
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                c = F.scaled_dot_product_attention(q, ke, ve, is_causal=True).float()
            print(f"attn 32K cudnn expanded vs flash gqa: max |diff| {(c - r).abs().max().item():.2e}")
        del q, k, v, ke, ve
        torch.cuda.empty_cache()


def split(Ts=(131072, 262144)):
    """Causal attention at the 3B head shape: one cuDNN call vs query chunks (causal diagonal block
    + unmasked earlier keys, merged by log-sum-exp)."""
    from yoco_core.kernels.attention import causal_attention_split
    torch.manual_seed(0)
    for T in Ts:
        q = torch.randn(1, 24, T, 128, device=DEV, dtype=torch.bfloat16)
        k = torch.randn(1, 8, T, 128, device=DEV, dtype=torch.bfloat16)
        v = torch.randn(1, 8, T, 128, device=DEV, dtype=torch.bfloat16)
        flops = 4 * 128 * 24 * T * T / 2
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        t = ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), reps=2, warm=1)
        print(f"split T={T // 1024}K sdpa causal     {t:8.1f} ms {flops / t / 1e9:5.0f} TFLOP/s", flush=True)
        for C in (16384, 32768, 65536):
            try:
                o = causal_attention_split(q, k, v, C)
                err = (o.float() - ref.float()).abs().max().item()
                t = ms(lambda: causal_attention_split(q, k, v, C), reps=2, warm=1)
                print(f"split T={T // 1024}K chunk {C // 1024:>3}K      {t:8.1f} ms {flops / t / 1e9:5.0f} TFLOP/s "
                      f"max|diff| {err:.2e}", flush=True)
            except Exception as e:
                print(f"split T={T // 1024}K chunk {C // 1024}K {type(e).__name__}: {str(e).splitlines()[0][:150]}")
        del q, k, v, ref
        torch.cuda.empty_cache()


def gemm():
    """The 3B self-decoder's matmuls at prefill-chunk shapes: plain ``a @ w.t()`` against the
    residual form ``c.addmm_(a, w.t())`` (cuBLAS adds the output it overwrites), both BLAS
    libraries."""
    torch.manual_seed(0)
    shapes = {"proj q|k|v|g|gt": (12312, 3072), "proj padded 12416": (12416, 3072),
              "o_proj": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192), "kv_proj": (2048, 3072)}
    for lib in ("default", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(lib)
        for M in (8192, 16384):
            for name, (N, K) in shapes.items():
                a = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
                w = torch.randn(N, K, device=DEV, dtype=torch.bfloat16)
                c = torch.randn(M, N, device=DEV, dtype=torch.bfloat16)
                f = 2 * M * N * K
                t_mm = ms(lambda: a @ w.t(), reps=10, warm=3)
                t_add = ms(lambda: c.addmm_(a, w.t()), reps=10, warm=3)
                print(f"gemm {lib:<8} M={M // 1024:>2}K {name:<18} mm {f / t_mm / 1e9:5.0f} TFLOP/s  "
                      f"addmm_ {f / t_add / 1e9:5.0f} TFLOP/s", flush=True)
    torch.backends.cuda.preferred_blas_library("default")


def residual(M=16384):
    """The residual adds of a 3B block at a prefill chunk: a matmul then an add against the matmul
    adding into the residual stream itself (``addmm(x, a, w.t(), out=x)``, what ``model.add_linear``
    does)."""
    torch.manual_seed(0)
    x = torch.randn(M, 3072, device=DEV, dtype=torch.bfloat16)
    for name, K in (("o_proj", 3072), ("down_proj", 8192)):
        a = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
        w = torch.randn(3072, K, device=DEV, dtype=torch.bfloat16) * 0.02
        t_add = ms(lambda: x + a @ w.t(), reps=20, warm=3)
        t_in = ms(lambda: torch.addmm(x, a, w.t(), out=x), reps=20, warm=3)
        print(f"residual M={M // 1024}K {name:<9} matmul + add {t_add:.3f} ms, addmm out=x {t_in:.3f} ms", flush=True)


def gla(T=16384, H=24, D=128):
    """fla-core's chunk_simple_gla at the 3B self-decoder shape over one prefill chunk: its
    default chunk of 64 tokens against 128 and 256 (fewer stored states, bigger blocks), each
    against our float32 PyTorch chunk form."""
    from fla.ops.simple_gla import chunk_simple_gla
    from yoco_core.kernels.gret import gret_chunk
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, T, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    g = F.logsigmoid(torch.randn(1, T, H, device=DEV) + 3) / 16
    s0 = torch.randn(1, H, D, D, device=DEV) * 0.1
    ro, rs = gret_chunk(q, k, v, g, D ** -0.5, s0)
    for C in (64, 128, 256):
        def fn():
            return chunk_simple_gla(q, k, v, g, scale=D ** -0.5, initial_state=s0, output_final_state=True,
                                    chunk_size=C)
        try:
            o, s = fn()
            t = ms(fn, reps=10, warm=3)
            print(f"gla T={T // 1024}K chunk {C:>3}: {t:.3f} ms, rel. diff to float32 chunk form: "
                  f"o {(o.float() - ro.float()).norm() / ro.float().norm():.2e}, "
                  f"state {(s.float() - rs).norm() / rs.norm():.2e}", flush=True)
        except Exception as e:
            print(f"gla chunk {C}: {type(e).__name__}: {str(e).splitlines()[0][:150]}", flush=True)


def decode(name, ctx=4096):
    cfg = get_config(name)
    m = build_model(cfg, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        cache = random_cache(m, ctx)
        ids = torch.randint(0, 1000, (1, 1), device=DEV)
        st = StaticDecoder(m, cache)
        for _ in range(3):
            st(ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                st(ids)
            torch.cuda.synchronize()
        kernels(prof, 5, title=f"{name} eager static decode step at {ctx}")
        cache = random_cache(m, ctx)
        g = make_decoder(m, cache)
        print(f"{name} graph step at {ctx}: {ms(lambda: g(ids), reps=20, warm=3):.3f} ms")
    del m, cache, st, g
    torch.cuda.empty_cache()


def prefill4k(name):
    m = build_model(get_config(name), device=DEV, dtype=torch.bfloat16)
    ids = torch.randint(0, 1000, (1, 4096), device=DEV)
    with torch.inference_mode():
        chunk = 16384 if name.startswith("yoco") else None
        t_hot = ms(lambda: m.prefill(ids, chunk_size=chunk, reserve=36), reps=5, warm=2)
        def cold():
            torch.cuda.synchronize(); torch.cuda.empty_cache()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); m.prefill(ids, chunk_size=chunk, reserve=36); b.record(); torch.cuda.synchronize()
            return a.elapsed_time(b)
        t_cold = statistics.median(cold() for _ in range(3))
        logits, cache = m.prefill(ids, chunk_size=chunk, reserve=36)
        dec = make_decoder(m, cache)
        dec(logits.argmax(-1, keepdim=True))
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record(); dec = None; cache = None; m.prefill(ids, chunk_size=chunk, reserve=36); b.record()
        torch.cuda.synchronize()
        t_drop = a.elapsed_time(b)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            m.prefill(ids, chunk_size=chunk, reserve=36)
            torch.cuda.synchronize()
        ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        gpu = sum(e.self_device_time_total for e in ev) / 1e3
        print(f"{name} prefill 4K: warm {t_hot:.1f} ms, after empty_cache {t_cold:.1f} ms, "
              f"dropping a captured decoder inside the timing {t_drop:.1f} ms; GPU busy {gpu:.1f} ms")
    del m
    torch.cuda.empty_cache()


def prefill(name, T=16384, start=49152):
    m = build_model(get_config(name), device=DEV, dtype=torch.bfloat16)
    ids = torch.randint(0, 1000, (1, start + T), device=DEV)
    with torch.inference_mode():
        chunk = T
        m.prefill(ids[:, :2 * T], chunk_size=chunk)    # warm-up (fla compiles)
        cache = m.new_cache(1, start + T)
        if start:
            m._run(ids[:, :start], cache, None)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            m._run(ids[:, start:], cache, "last")
            torch.cuda.synchronize()
        kernels(prof, 1, n=30, title=f"{name} one prefill chunk of {T} at {start}")
    del m, cache
    torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="attn,decode,prefill4k,prefill")
    parts = ap.parse_args().parts.split(",")
    if "attn" in parts:
        attn()
    if "split" in parts:
        split()
    if "gemm" in parts:
        gemm()
    if "residual" in parts:
        residual()
    if "gla" in parts:
        gla()
    if "decode" in parts:
        decode("yoco-3b", 4096)
        decode("transformer-3b", 4096)
    if "prefill4k" in parts:
        prefill4k("yoco-3b")
        prefill4k("transformer-3b")
    if "prefill" in parts:
        prefill("yoco-3b")
        prefill("transformer-3b", T=32768, start=0)
