"""Where an 8B Transformer's 128K prefill spends its time, and which attention form is fastest
(one H200 call, ~2 minutes): one layer's causal attention (32 query heads over 8 KV heads of 128)
by SDPA's own choice, by each SDPA backend forced, by our cuDNN split at several chunk sizes; then
the whole Llama-3.1-8B-shaped prefill (random weights) unchunked and in chunks, with its peaks.

    python3 scripts/diag_prefill_attention.py [--ctx 131072]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, reps: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def attention_variants(n: int) -> None:
    from yoco_core.kernels.attention import causal_attention_split, partial_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = 4 * 32 * 128 * n * n / 2
    rows = {"sdpa default (is_causal, gqa)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)}
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def run(be=be):
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        rows[f"sdpa forced {name}"] = run
    kk, vv = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
    rows["cudnn one call (k,v expanded before)"] = lambda: partial_attention(q, kk, vv, True)
    for chunk in (65536, 32768, 16384):
        if chunk < n:
            rows[f"our split, chunk {chunk}"] = lambda c=chunk: causal_attention_split(q, k, v, c)
    print(f"attention, one layer, ctx {n}:")
    for name, fn in rows.items():
        try:
            t = timed(fn)
            print(f"  {name:42s} {t * 1e3:8.1f} ms  {flops / t / 1e12:6.0f} TFLOP/s")
        except Exception as e:          # a backend that refuses these shapes
            print(f"  {name:42s} refused: {str(e).splitlines()[0][:80]}")
    del q, k, v, kk, vv


def whole_prefill(n: int) -> None:
    from yoco_core.config import ModelConfig
    from yoco_core.model import build_model

    cfg = ModelConfig(name="llama-3.1-8b-shape", arch="transformer", vocab_size=128256, dim=4096, n_layers=32,
                      n_heads=32, n_kv_heads=8, ffn_dim=14336, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.set_default_dtype(torch.bfloat16)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16)
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")
    print(f"whole prefill, {cfg.name}, ctx {n}:")
    for chunk in (None, 65536, 32768, 16384):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = timed(lambda: model.prefill(ids, chunk_size=chunk, reserve=64), reps=2)
        print(f"  chunk {str(chunk):6s} {t:7.3f} s  peak alloc {torch.cuda.max_memory_allocated() / 1e9:5.1f} GB  "
              f"reserved {torch.cuda.max_memory_reserved() / 1e9:5.1f} GB")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ctx", type=int, default=131072)
    a = p.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    attention_variants(a.ctx)
    whole_prefill(a.ctx)
