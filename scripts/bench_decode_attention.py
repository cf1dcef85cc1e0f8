"""GPU benchmark of the split-KV Triton decode kernel (yoco_core/kernels/decode_attention).

Run on the GPU machine:  python3 scripts/bench_decode_attention.py [--no-sweep] [--lengths 65536,262144]
One query token, H=24 query heads over H_kv=8 KV heads, D=128, bfloat16, capacity = length + 256.

1. For B=1 at 64K / 256K / 1M positions (and B=4, B=16 at 256K): our kernel against SDPA on the
   sliced buffer (FLASH and cuDNN backends, where they run), median time (triton.testing.do_bench)
   and achieved TB/s counting K+V of the filled length read once; our output checked against each
   SDPA output (max abs error / max |SDPA| < 2e-2).
2. A sweep of tile size / warps / stages / splits at B=1, 256K (skip with --no-sweep).
3. CUDA graph: the kernel captured once with a device length tensor, replayed while the length
   grows (inside the graph, ``length += 1`` before attending, and by writes from the host between
   replays); every replay must equal the eager call at that length bit for bit. Also the time of a
   graph replay against the eager call.
Rows are printed as measured; a summary table is printed last. Writes nothing but stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from yoco_core.kernels.decode_attention import split_kv  # noqa: E402
from yoco_core.kernels.decode_attention.split_kv import (  # noqa: E402
    choose_num_splits, decode_attention_triton, make_workspace)

H, H_KV, D, DTYPE, PAD = 24, 8, 128, torch.bfloat16, 256
TOL = 2e-2


def bench(fn) -> float:
    """Median milliseconds (L2 flushed between runs by do_bench)."""
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def rel_err(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def make_inputs(B, L, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    C = L + PAD
    q = torch.randn(B, H, D, device="cuda", dtype=DTYPE, generator=g)
    k = torch.randn(B, H_KV, C, D, device="cuda", dtype=DTYPE, generator=g)
    v = torch.randn(B, H_KV, C, D, device="cuda", dtype=DTYPE, generator=g)
    return q, k, v


def kv_bytes(B, L) -> int:
    return 2 * B * H_KV * L * D * torch.finfo(DTYPE).bits // 8


def sdpa_fn(q, k, v, L, backend):
    def fn():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q[:, :, None], k[:, :, :L], v[:, :, :L],
                                                  enable_gqa=True)[:, :, 0]
    return fn


def compare(B, L, rows, table):
    q, k, v = make_inputs(B, L)
    length = torch.full((1,), L, dtype=torch.int32, device="cuda")
    S = choose_num_splits(B, H_KV, k.shape[2], q.device)
    ws = make_workspace(B, H, D, S, q.device)
    out = torch.empty(B, H, D, device="cuda", dtype=DTYPE)
    ours = lambda: decode_attention_triton(q, k, v, length, S, out=out, workspace=ws)  # noqa: E731
    o = ours().clone()
    gb = kv_bytes(B, L) / 1e9
    tag = f"B={B} L={L // 1024}K"
    t = bench(ours)
    rows.append((f"{tag} triton split-kv (splits={S})", f"{t:.3f} ms  {gb / t:.2f} TB/s"))
    entry = {"case": tag, "triton_ms": t, "triton_tbs": gb / t}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        fn = sdpa_fn(q, k, v, L, backend)
        try:
            ref = fn()
            torch.cuda.synchronize()
        except Exception as e:  # backend unavailable for these shapes / this build
            rows.append((f"{tag} sdpa {name}", f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:60]})"))
            entry[name] = None
            continue
        err = rel_err(o, ref)
        ts = bench(fn)
        ok = "ok" if err < TOL else "MISMATCH"
        rows.append((f"{tag} sdpa {name}", f"{ts:.3f} ms  {gb / ts:.2f} TB/s  ours vs it {err:.1e} {ok}"))
        entry[name] = (ts, err)
    table.append(entry)


def sweep(rows, L=256 * 1024):
    q, k, v = make_inputs(1, L)
    length = torch.full((1,), L, dtype=torch.int32, device="cuda")
    gb = kv_bytes(1, L) / 1e9
    auto = choose_num_splits(1, H_KV, k.shape[2], q.device)
    ref = decode_attention_triton(q, k, v, length, auto).clone()
    best = None
    for block_n in (32, 64, 128):
        for warps in (4, 8):
            for stages in (2, 3, 4):
                for S in (auto // 2, auto, 2 * auto):
                    try:
                        fn = lambda: decode_attention_triton(q, k, v, length, S, block_n=block_n,  # noqa: E731
                                                             num_warps=warps, num_stages=stages)
                        err = rel_err(fn(), ref)
                        t = bench(fn)
                    except Exception as e:
                        rows.append((f"sweep bn={block_n} w={warps} st={stages} S={S}", f"failed: {type(e).__name__}"))
                        continue
                    rows.append((f"sweep bn={block_n} w={warps} st={stages} S={S}",
                                 f"{t:.3f} ms  {gb / t:.2f} TB/s  err {err:.1e}"))
                    if best is None or t < best[0]:
                        best = (t, block_n, warps, stages, S)
    return best


def graph_check(rows, B=1, L0=64 * 1024):
    """Capture once, replay while the length grows; each replay equals the eager call."""
    q, k, v = make_inputs(B, L0, seed=1)
    C = k.shape[2]
    S = choose_num_splits(B, H_KV, C, q.device)
    length = torch.full((B,), L0 - 1, dtype=torch.int32, device="cuda")
    out = torch.empty(B, H, D, device="cuda", dtype=DTYPE)
    ws = make_workspace(B, H, D, S, q.device)

    def step():
        length.add_(1)                      # the new token's position is now filled
        decode_attention_triton(q, k, v, length, S, out=out, workspace=ws)

    s = torch.cuda.Stream()                 # warm up (compiles) off the capture stream
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
        length.fill_(L0 - 1)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    length.fill_(L0 - 1)
    torch.cuda.synchronize()

    bad, n = [], 0
    for i in range(70):                     # L0 .. L0+69: crosses a 64-key tile boundary
        g.replay()
        L = L0 + i
        eager = decode_attention_triton(q, k, v, L, S)
        n += 1
        if not torch.equal(out, eager):
            bad.append(L)
    for L in (L0 + 100, L0 + 255, C):       # lengths set from the host between replays
        length.fill_(L - 1)
        g.replay()
        n += 1
        if not torch.equal(out, decode_attention_triton(q, k, v, L, S)):
            bad.append(L)
    sref = F.scaled_dot_product_attention(q.float()[:, :, None], k.float(), v.float(), enable_gqa=True)[:, :, 0]
    err = rel_err(out, sref)
    rows.append((f"graph replays equal eager (B={B}, {L0 // 1024}K..cap)",
                 f"{n - len(bad)}/{n} equal" + (f", differ at {bad[:5]}" if bad else "")
                 + f"; at capacity vs fp32 sdpa {err:.1e} {'ok' if err < TOL else 'MISMATCH'}"))
    length.fill_(L0)
    t_graph = bench(g.replay)               # replay includes length += 1: keep the length in range
    length.fill_(L0)
    t_eager = bench(lambda: decode_attention_triton(q, k, v, length, S, out=out, workspace=ws))
    rows.append((f"B={B} {L0 // 1024}K one graph replay vs eager launch", f"{t_graph:.3f} ms vs {t_eager:.3f} ms"))
    return not bad and err < TOL


class Rows(list):
    def append(self, row):
        super().append(row)
        print(f"{row[0]:<52}  {row[1]}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="65536,262144,1048576")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"SMs {torch.cuda.get_device_properties(0).multi_processor_count}  defaults: block_n "
          f"{split_kv.DEFAULT_BLOCK_N}, warps {split_kv.DEFAULT_NUM_WARPS}, stages {split_kv.DEFAULT_NUM_STAGES}")
    rows, table = Rows(), []
    cases = [(1, int(x)) for x in args.lengths.split(",")] + [(4, 256 * 1024), (16, 256 * 1024)]
    for B, L in cases:
        try:
            compare(B, L, rows, table)
        except torch.cuda.OutOfMemoryError:
            rows.append((f"B={B} L={L // 1024}K", "out of memory"))
        torch.cuda.empty_cache()          # the case's buffers died with compare()'s frame
    graph_ok = graph_check(rows)
    torch.cuda.empty_cache()
    best = None if args.no_sweep else sweep(rows)

    print("\nsummary (median ms, TB/s = K+V of the length read once / time)")
    print(f"{'case':<16}{'triton ms':>10}{'TB/s':>7}{'flash ms':>10}{'TB/s':>7}{'cudnn ms':>10}{'TB/s':>7}"
          f"{'max err':>9}")
    for e in table:
        gb = e["triton_tbs"] * e["triton_ms"]
        cells = [f"{e['case']:<16}{e['triton_ms']:>10.3f}{e['triton_tbs']:>7.2f}"]
        errs = []
        for name in ("flash", "cudnn"):
            if e.get(name):
                ts, err = e[name]
                cells.append(f"{ts:>10.3f}{gb / ts:>7.2f}")
                errs.append(err)
            else:
                cells.append(f"{'n/a':>10}{'':>7}")
        cells.append(f"{max(errs):>9.1e}" if errs else f"{'n/a':>9}")
        print("".join(cells))
    print(f"graph capture + replay with growing length: {'OK' if graph_ok else 'FAILED'}")
    if best:
        print(f"sweep best at B=1 256K: block_n={best[1]} warps={best[2]} stages={best[3]} splits={best[4]}"
              f" -> {best[0]:.3f} ms")


if __name__ == "__main__":
    main()
