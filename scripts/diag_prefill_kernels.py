"""Where long prefills spend their time, kernel by kernel (one H200 call, ~4 minutes).

    python3 scripts/diag_prefill_kernels.py --out DIR [--parts attention,profile,chunks,swa,yoco]

* ``attention``: one Llama-3.1-8B layer's causal attention at 128K (32 over 8 heads of 128) by
  SDPA's choice, our 64K split, staircase splits (the diagonal blocks batched into one causal
  call, each block's earlier keys unmasked) and an unmasked call's own rate, in TFLOP/s.
* ``profile``: the whole 8B-shaped prefill at 128K, ours (64K chunks) and transformers' (SDPA,
  ``logits_to_keep=1``), under ``torch.profiler``: CUDA time per kernel family, so the two sides'
  non-attention work can be compared (``DIR/kernels.csv``).
* ``chunks``: the whole 8B-shaped prefill at 128K unchunked and in 64K / 32K / 16K chunks, with
  its peak memory (what ``--chunk-size auto`` is chosen from).
* ``swa``: sliding-window prefill attention (window 1024, the yoco-swa-3b self-decoder's 24 heads of
  128, a 16K chunk after earlier ones, and Mistral's 32 over 8 heads, window 4096, 64K) by the
  masked blocks, ``band_attention`` and ``flash_window``; then yoco-swa-3b itself: prefill at 1M
  with each form and two chunk sizes, decode steps (CUDA graph) at 4K and 1M.
* ``yoco`` (not in the default parts): YOCO-3B's whole prefill at ``--yoco-ctx`` (1M) in 8K chunks
  (``--chunk-size auto``), bf16 and fp8, under ``torch.profiler``: CUDA time per kernel family and
  the top kernels (``DIR/yoco-kernels.csv``), beside the wall time; where issue 17's 5.0 s (bf16) and
  4.0 s (fp8) would have to come from.
"""
from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

BF16 = torch.bfloat16


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


def _qkv(n, L, H, Hkv, D=128, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(1, H, n, D, device="cuda", dtype=BF16, generator=g),
            torch.randn(1, Hkv, L, D, device="cuda", dtype=BF16, generator=g),
            torch.randn(1, Hkv, L, D, device="cuda", dtype=BF16, generator=g))


def staircase(q, k, v, block: int):
    """Causal attention with the diagonal blocks as the batch of one causal call, each block's
    earlier keys in one unmasked call, merged."""
    from yoco_core.kernels.attention import merge_partials, partial_attention

    n, H, D = q.shape[2], q.shape[1], q.shape[3]
    nb = n // block
    blocks = lambda t: t[0].unflatten(1, (nb, block)).transpose(0, 1)
    od, ld = partial_attention(blocks(q), blocks(k), blocks(v), True)
    out = torch.empty(1, n, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    o = blocks(out)
    o[0].copy_(od[0])
    for i in range(1, nb):
        s = i * block
        op, lp = partial_attention(q[:, :, s:s + block], k[:, :, :s], v[:, :, :s], False)
        merge_partials(op, lp, od[i:i + 1], ld[i:i + 1], out[:, :, s:s + block])
    return out


def attention_part(rows: list) -> None:
    from yoco_core.kernels.attention import causal_attention_split, partial_attention

    n = 131072
    q, k, v = _qkv(n, n, 32, 8)
    causal = 4 * 32 * 128 * n * n / 2
    cases = {
        "sdpa is_causal (cuDNN)": (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), causal),
        "our split 64K": (lambda: causal_attention_split(q, k, v, 65536), causal),
        "our split 43K (3 parts)": (lambda: causal_attention_split(q, k, v, 43776), causal),
        "staircase 32K": (lambda: staircase(q, k, v, 32768), causal),
        "staircase 16K": (lambda: staircase(q, k, v, 16384), causal),
        "staircase 8K": (lambda: staircase(q, k, v, 8192), causal),
        "unmasked 64K x 64K": (lambda: partial_attention(q[:, :, 65536:], k[:, :, :65536], v[:, :, :65536], False),
                               4 * 32 * 128 * 65536 * 65536),
        "unmasked 16K x 112K": (lambda: partial_attention(q[:, :, -16384:], k[:, :, :114688], v[:, :, :114688], False),
                                4 * 32 * 128 * 16384 * 114688),
        "causal 64K": (lambda: partial_attention(q[:, :, :65536], k[:, :, :65536], v[:, :, :65536], True),
                       4 * 32 * 128 * 65536 * 65536 / 2),
        "causal 16K x 8 batched": (lambda: partial_attention(q[0].unflatten(1, (8, 16384)).transpose(0, 1),
                                                             k[0].unflatten(1, (8, 16384)).transpose(0, 1),
                                                             v[0].unflatten(1, (8, 16384)).transpose(0, 1), True),
                                   8 * 4 * 32 * 128 * 16384 * 16384 / 2),
    }
    # the layouts the model gives: q a transposed [1, n, H, D] (the projection's), k / v a slice of
    # a preallocated [1, H_kv, capacity, D] buffer
    qs = q.transpose(1, 2).contiguous().transpose(1, 2)
    kb = torch.empty(1, 8, n + 256, 128, device="cuda", dtype=BF16)
    vb = torch.empty_like(kb)
    kb[:, :, :n], vb[:, :, :n] = k, v
    ks, vs = kb[:, :, :n], vb[:, :, :n]
    cases["our split 64K, model layouts"] = (lambda: causal_attention_split(qs, ks, vs, 65536), causal)
    cases["our split 64K, q contiguous, buffer k/v"] = (lambda: causal_attention_split(q, ks, vs, 65536), causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).float()
    for name, (fn, flops) in cases.items():
        t = timed(fn)
        err = ""
        if name.startswith(("our", "stair")):
            err = f"{float((fn().float() - ref).norm() / ref.norm()):.1e}"
        rows.append(("attention", name, round(t * 1e3, 2), round(flops / t / 1e12, 1), err))
    del q, k, v, ref, qs, kb, vb, ks, vs


def _kernel_family(name: str) -> str:
    n = name.lower()
    for key, fam in (("quantize", "fp8 quantize"), ("chunk_fwd", "gated retention"),
                     ("chunk_local_cumsum", "gated retention"), ("gret", "gated retention"), ("cudnn", "attention"), ("flash", "attention"), ("fmha", "attention"), ("sdpa", "attention"),
                     ("merge", "attention merge"), ("gemm", "matmul"), ("nvjet", "matmul"), ("cutlass", "matmul"),
                     ("sm90", "matmul"), ("rms", "norm"), ("norm", "norm"), ("rope", "rope"), ("silu", "silu_mul"),
                     ("copy", "copy"), ("cat", "copy"), ("elementwise", "elementwise"), ("reduce", "reduce")):
        if key in n:
            return fam
    return "other"


def _profiled(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per = defaultdict(float)
    names = defaultdict(float)
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if e.device_type.name == "CUDA" or "CUDA" in str(e.device_type):
            per[_kernel_family(e.key)] += us / 1e3
            names[e.key] += us / 1e3
    return {"families": dict(per), "top": sorted(names.items(), key=lambda x: -x[1])[:12]}


def profile_part(rows: list, out: Path) -> None:
    import sys

    import transformers

    from yoco_core import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_hf_models import hf_config

    n = 131072
    cfg = _llama_8b_shape()
    ids = torch.randint(0, 128256, (1, n), device="cuda")
    torch.set_default_dtype(BF16)
    ours = build_model(cfg, device="cuda", dtype=BF16)
    torch.set_default_dtype(torch.float32)
    with torch.inference_mode():
        t_ours = timed(lambda: ours.prefill(ids, chunk_size=65536, reserve=64), reps=2)
        p_ours = _profiled(lambda: ours.prefill(ids, chunk_size=65536, reserve=64))
    del ours
    torch.cuda.empty_cache()
    with torch.device("cuda"):
        hf = transformers.LlamaForCausalLM._from_config(hf_config("llama-3.1-8b", False), dtype=BF16,
                                                         attn_implementation="sdpa").eval()
    with torch.inference_mode():
        t_hf = timed(lambda: hf(ids, logits_to_keep=1, use_cache=True), reps=2)
        p_hf = _profiled(lambda: hf(ids, logits_to_keep=1, use_cache=True))
    del hf
    torch.cuda.empty_cache()
    rows.append(("profile", "ours 64K chunks, wall", round(t_ours * 1e3, 1), "", ""))
    rows.append(("profile", "transformers, wall", round(t_hf * 1e3, 1), "", ""))
    with open(out / "kernels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["side", "kind", "name", "ms"])
        for side, p in (("ours", p_ours), ("transformers", p_hf)):
            for fam, ms in sorted(p["families"].items(), key=lambda x: -x[1]):
                w.writerow([side, "family", fam, round(ms, 1)])
                rows.append(("profile", f"{side}: {fam}", round(ms, 1), "", ""))
            for name, ms in p["top"]:
                w.writerow([side, "kernel", name[:120], round(ms, 1)])


def yoco_part(rows: list, out: Path, n: int) -> None:
    from yoco_core.perf.runners import build_runner
    from yoco_core.perf.sweep import DEFAULT_YOCO_CHUNK

    with open(out / "yoco-kernels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dtype", "kind", "name", "ms"])
        for dtype in ("bf16", "fp8"):            # the model yoco profile --size 3b [--dtype fp8] measures
            runner = build_runner("yoco", "3b", "cuda", BF16, n + 64, fp8=dtype == "fp8")
            ids = torch.randint(0, runner.config.vocab_size, (1, n), device="cuda")
            run = lambda: runner.prefill(ids, DEFAULT_YOCO_CHUNK, 64)
            with torch.inference_mode():
                t = timed(run, reps=2)
                prof = _profiled(run)
            rows.append(("yoco", f"yoco-3b {n} {dtype}, wall", round(t * 1e3, 1), "", ""))
            for fam, ms in sorted(prof["families"].items(), key=lambda x: -x[1]):
                w.writerow([dtype, "family", fam, round(ms, 1)])
                rows.append(("yoco", f"yoco-3b {n} {dtype}: {fam}", round(ms, 1), "", ""))
            for name, ms in prof["top"]:
                w.writerow([dtype, "kernel", name[:120], round(ms, 1)])
            del runner, prof
            torch.cuda.empty_cache()


def _llama_8b_shape():
    from yoco_core.config import ModelConfig

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    return ModelConfig(name="llama-3.1-8b-shape", arch="transformer", vocab_size=128256, dim=4096, n_layers=32,
                       n_heads=32, n_kv_heads=8, ffn_dim=14336, rope_theta=500000.0, rope_scaling=rope)


def chunks_part(rows: list) -> None:
    from yoco_core import build_model

    n = 131072
    cfg = _llama_8b_shape()
    model = build_model(cfg, device="cuda", dtype=BF16)
    ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")
    with torch.inference_mode():
        for chunk in (None, 65536, 32768, 16384):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t = timed(lambda: model.prefill(ids, chunk_size=chunk, reserve=64), reps=2)
            rows.append(("chunks", f"8B prefill 128K, chunk {chunk}", round(t * 1e3, 1),
                         round(torch.cuda.max_memory_allocated() / 1e9, 1), "peak GB in the second column"))
    del model


def swa_part(rows: list) -> None:
    import yoco_core.model as model_module
    from yoco_core.kernels import attention

    forms = {"masked blocks": attention._masked_band, "band (cuDNN, mirrored)": attention.band_attention,
             "flash window": attention.flash_window}
    for label, n, H, Hkv, W in (("swa-3b chunk 16K", 16384, 24, 24, 1024), ("mistral 64K", 65536, 32, 8, 4096)):
        L = n + W - 1
        q, k, v = _qkv(n, L, H, Hkv)
        flops = 4 * H * 128 * n * W          # the band's useful work (about W keys per query)
        base = attention._masked_band(q, k, v, W).float()
        for name, fn in forms.items():
            try:
                t = timed(lambda: fn(q, k, v, W))
                err = f"{float((fn(q, k, v, W).float() - base).norm() / base.norm()):.1e}"
                rows.append(("swa", f"{label}: {name}", round(t * 1e3, 3), round(flops / t / 1e12, 1), err))
            except Exception as e:
                rows.append(("swa", f"{label}: {name}", "", "", "refused: " + str(e).splitlines()[0][:60]))
        del q, k, v, base
    # the model itself, with each fast form in its self-decoder
    from yoco_core import build_model, get_config
    from yoco_core.graphs import make_decoder

    torch.cuda.empty_cache()
    model = build_model(get_config("yoco-swa-3b"), device="cuda", dtype=BF16)
    ids = torch.randint(0, model.config.vocab_size, (1, 1 << 20), device="cuda")
    for name in ("band (cuDNN, mirrored)", "flash window"):
        model_module.sliding_window_attend = lambda q, k, v, W, fn=forms[name]: fn(q, k, v, W)
        for chunk in (16384, 65536):
            with torch.inference_mode():
                model.prefill(ids[:, :chunk * 2], chunk_size=chunk)          # warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.prefill(ids, chunk_size=chunk, reserve=64)
                torch.cuda.synchronize()
            rows.append(("swa", f"yoco-swa-3b 1M prefill, {name}, chunk {chunk}", round(time.perf_counter() - t0, 3),
                         "", ""))
            torch.cuda.empty_cache()
    model_module.sliding_window_attend = attention.sliding_window_attend
    for ctx in (4096, 1 << 20):
        with torch.inference_mode():
            last, cache = model.prefill(ids[:, :ctx], chunk_size=16384, reserve=64)
            step = make_decoder(model, cache)
            tok = last.argmax(-1, keepdim=True)
            for _ in range(3):
                tok = step(tok)[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(32):
                tok = step(tok)[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t_dec = (time.perf_counter() - t0) / 32
        rows.append(("swa", f"yoco-swa-3b ctx {ctx}: decode ms ({type(step).__name__})", round(t_dec * 1e3, 2), "", ""))
        del cache
        torch.cuda.empty_cache()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", default="attention,profile,chunks,swa")
    p.add_argument("--yoco-ctx", type=int, default=1 << 20, help="the yoco part's prompt length")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    rows: list = []
    for part in a.parts.split(","):
        t0 = time.time()
        try:
            {"attention": attention_part, "profile": lambda r: profile_part(r, a.out), "chunks": chunks_part,
             "swa": swa_part, "yoco": lambda r: yoco_part(r, a.out, a.yoco_ctx)}[part](rows)
        except Exception as e:            # one part failing keeps the others' rows
            rows.append((part, "FAILED", "", "", f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"))
        print(f"[{part} took {time.time() - t0:.0f} s]", flush=True)
        torch.cuda.empty_cache()
    with open(a.out / "diag.csv", "w", newline="") as f:
        csv.writer(f).writerows([("part", "case", "ms_or_s", "tflops_or_ms", "note")] + rows)
    for r in rows:
        print(" | ".join(str(x) for x in r))
