"""GPU check of the model core: correctness of the CUDA paths, ceilings, and first timings.

Run on the GPU machine:  python3 scripts/gpu_check_core.py [--big]
Prints a short table last; writes nothing but stdout.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from yoco_core import build_model, get_config
from yoco_core.kernels.gret import fla_available, gret_recurrent_ref, gated_retention


class Rows(list):
    """Rows printed as they come, so a run cut short still reports what it measured."""

    def append(self, row):
        super().append(row)
        print(f"{row[0]:<48}  {row[1]}", flush=True)


def ms(fn, reps=10, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def correctness(rows):
    dev = "cuda"
    torch.manual_seed(0)
    B, T, H, K = 2, 300, 4, 64
    q, k = torch.randn(B, T, H, K, device=dev), torch.randn(B, T, H, K, device=dev)
    v = torch.randn(B, T, H, K, device=dev)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) * 3) / 4
    s0 = torch.randn(B, H, K, K, device=dev)
    ref_o, ref_s = gret_recurrent_ref(q.double(), k.double(), v.double(), g.double(), K ** -0.5, s0.double())
    o, s = gated_retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, K ** -0.5, s0)
    rows.append(("gret dispatch bf16 vs f64 ref (o, state)", f"{rel(o, ref_o):.2e}, {rel(s, ref_s):.2e}"))
    o1, s1 = gated_retention(q[:, :1].bfloat16(), k[:, :1].bfloat16(), v[:, :1].bfloat16(), g[:, :1], K ** -0.5, s0)
    r1o, r1s = gret_recurrent_ref(q[:, :1].double(), k[:, :1].double(), v[:, :1].double(), g[:, :1].double(), K ** -0.5, s0.double())
    rows.append(("gret step bf16 vs f64 ref (o, state)", f"{rel(o1, r1o):.2e}, {rel(s1, r1s):.2e}"))
    for name in ("yoco-tiny", "yoco-swa-tiny", "transformer-tiny"):
        for dtype in (torch.float32, torch.bfloat16):
            m = build_model(get_config(name).replace(window=64), device=dev, dtype=dtype)
            ids = torch.randint(0, 256, (2, 500), device=dev)
            with torch.inference_mode():
                full = m(ids)
                last, cache = m.prefill(ids[:, :300], chunk_size=128)
                outs = [last[:, None]]
                for t in range(300, 499):
                    lo, cache = m.decode(ids[:, t:t + 1], cache)
                    outs.append(lo)
            got = torch.cat(outs, 1)
            rows.append((f"{name} {str(dtype)[6:]} prefill+decode vs forward", f"{rel(got, full[:, 299:499]):.2e}"))


def ulps(a, ref):
    """Largest difference in units of the last place of ``ref``'s dtype at ``ref``'s magnitude."""
    eps = torch.finfo(ref.dtype).eps
    scale = ref.float().abs().clamp_min(torch.finfo(ref.dtype).tiny) * eps
    return float(((a.float() - ref.float()).abs() / scale).max())


def fused_kernels(rows):
    """The fused Triton kernels against their references on CUDA, bf16, at the 3B shapes."""
    from yoco_core.kernels.fused import naive, triton_kernels as tk
    torch.manual_seed(0)
    dt, dev = torch.bfloat16, "cuda"
    x = torch.randn(3, 700, 3072, device=dev, dtype=dt) * 3
    w = (torch.randn(3072, device=dev) * 0.2 + 1).to(dt)
    rows.append(("fused rms_norm bf16: ulps", f"{ulps(tk.rms_norm(x, w, 1e-5), naive.rms_norm_ref(x, w, 1e-5)):.1f}"))
    p = torch.randn(2, 700, 4 * 3072 + 24, device=dev, dtype=dt)
    pos = torch.arange(5000, 5700, device=dev)
    freqs = torch.outer(pos.float(), 1.0 / 10000 ** (torch.arange(0, 128, 2, device=dev).float() / 128))
    cos, sin = torch.cat((freqs, freqs), -1).cos().to(dt), torch.cat((freqs, freqs), -1).sin().to(dt)
    q, k, v = tk.rope(p[..., :9216].view(2, 700, 72, 128), cos, sin, 24, 24)
    rq, rk, rv = naive.rope_ref(p[..., :9216].view(2, 700, 72, 128), cos, sin, 24, 24)
    rows.append(("fused rope bf16: max |diff| (q, k, v)", f"{(q.float() - rq.float()).abs().max().item():.2e}, "
                                                           f"{(k.float() - rk.float()).abs().max().item():.2e}, "
                                                           f"{(v.float() - rv.float()).abs().max().item():.2e}"))
    gu = torch.randn(700, 2 * 8192, device=dev, dtype=dt) * 2
    rows.append(("fused silu_mul bf16: ulps", f"{ulps(tk.silu_mul(gu), naive.silu_mul_ref(gu)):.1f}"))
    o = torch.randn(2, 700, 24, 128, device=dev, dtype=dt)
    rows.append(("fused head_norm_gate bf16: ulps", f"{ulps(tk.head_norm_gate(o, p[..., 9216:12288], 1e-5), naive.head_norm_gate_ref(o, p[..., 9216:12288], 1e-5)):.1f}"))
    p1 = p[:, :1].contiguous()
    st = torch.randn(2, 24, 128, 128, device=dev)
    o1, s1 = tk.gret_decode(p1, cos[:1], sin[:1], st, 24, 128 ** -0.5, 16.0, 1e-5)
    r1, rs1 = naive.gret_decode_ref(p1, cos[:1], sin[:1], st, 24, 128 ** -0.5, 16.0, 1e-5)
    rows.append(("fused gret_decode bf16: max |diff| (out, state)", f"{(o1.float() - r1.float()).abs().max().item():.2e}, "
                                                                   f"{rel(s1, rs1):.2e} rel"))


def graph_decode(rows, names=("yoco-tiny", "transformer-tiny")):
    """The shipped models in bf16: chunked prefill then CUDA-graph decoding (fused kernels, the
    in-place gRet step) against the full forward, 1000 steps from 2000 tokens."""
    from yoco_core import load_model
    from yoco_core.graphs import make_decoder
    torch.manual_seed(0)
    for name in names:
        m = load_model(name, device="cuda", dtype=torch.bfloat16)
        ids = torch.randint(0, 256, (2, 3000), device="cuda")
        with torch.inference_mode():
            full = m(ids).float()
            last, cache = m.prefill(ids[:, :2000], chunk_size=512, reserve=1000)
            dec = make_decoder(m, cache)
            outs = [last.float()]
            for t in range(2000, 2999):
                outs.append(dec(ids[:, t:t + 1])[:, -1].float().clone())
        got, ref = torch.stack(outs, 1), full[:, 1999:2999]
        agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        rows.append((f"{name} bf16 prefill+{type(dec).__name__} vs forward",
                     f"rel {rel(got, ref):.2e}, argmax agrees {agree:.3f}"))


def ceilings(rows):
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = ms(lambda: a @ b)
    rows.append(("matmul bf16 8192^3 TFLOP/s", f"{2 * 8192 ** 3 / t / 1e9:.0f}"))
    x = torch.randn(2 ** 30 // 2, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    t = ms(lambda: y.copy_(x))
    rows.append(("copy TB/s (read+write)", f"{2 * x.nbytes / t / 1e9:.2f}"))
    del a, b, x, y


def big(rows, ctxs, arch, chunk):
    cfg = get_config(f"{arch}-3b")
    torch.cuda.empty_cache()
    m = build_model(cfg, device="cuda", dtype=torch.bfloat16)
    wbytes = sum(p.numel() * p.element_size() for p in m.parameters())
    for T in ctxs:
        t_start = time.perf_counter()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, 50000, (1, T), device="cuda")
        try:
            with torch.inference_mode():
                m.prefill(ids[:, :4096], chunk_size=chunk)  # warm-up (autotune)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                logits, cache = m.prefill(ids, chunk_size=chunk, reserve=64)
                torch.cuda.synchronize()
                pre = time.perf_counter() - t0
                tok = logits.argmax(-1, keepdim=True)
                dec = ms(lambda: m.decode(tok, cache), reps=20, warm=3)
            peak = torch.cuda.max_memory_allocated() / 1e9
            kvb = cache.nbytes()
            floor = (wbytes + kvb * (len(m.cross_layers) if arch == "yoco" else 1)) / 3.0e12 * 1e3
            rows.append((f"{arch}-3b T={T // 1024}k chunk={chunk}",
                         f"prefill {pre:.2f}s peak {peak:.1f}GB decode {dec:.2f}ms (floor~{floor:.1f}ms) "
                         f"[cell {time.perf_counter() - t_start:.0f}s]"))
            del cache, logits
        except torch.OutOfMemoryError:
            rows.append((f"{arch}-3b T={T // 1024}k", "OOM"))
        del ids
    del m
    torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--big", action="store_true")
    p.add_argument("--yoco-ctx", default="65536,262144,1048576")
    p.add_argument("--tf-ctx", default="32768,131072")
    p.add_argument("--chunk", type=int, default=32768)
    p.add_argument("--kernels-only", action="store_true", help="only the fused-kernel checks")
    p.add_argument("--graph-only", action="store_true", help="only the graph-decoding check")
    args = p.parse_args()
    rows = Rows()
    for r in [("device", torch.cuda.get_device_name()), ("torch", torch.__version__),
              ("fla available", str(fla_available())), ("gret backend", os.environ.get("YOCO_GRET_BACKEND", "auto"))]:
        rows.append(r)
    if args.graph_only:
        graph_decode(rows)
        return
    fused_kernels(rows)
    if args.kernels_only:
        return
    correctness(rows)
    ceilings(rows)
    if args.big:
        big(rows, [int(x) for x in args.yoco_ctx.split(",")], "yoco", args.chunk)
        big(rows, [int(x) for x in args.tf_ctx.split(",")], "transformer", None)
    w = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{a:<{w}}  {b}" for a, b in rows))


if __name__ == "__main__":
    main()
