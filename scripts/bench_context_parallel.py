"""Context-parallel prefill over N GPUs (issue 18): one long prompt split over the ranks
(``yoco_core.parallel.context``: the Transformer by ring attention, YOCO by its chunk parallelism),
timed, with each rank's peak memory; one row per (arch, ctx) appended to ``OUT/cp.csv`` as soon as
it is measured.

    torchrun --nproc-per-node N scripts/bench_context_parallel.py --arch transformer,yoco --size 3b \
        --ctx 256k,512k,1m --out DIR          # N = 1 times model.prefill (the one-GPU reference)
    torchrun --nproc-per-node 2 scripts/bench_context_parallel.py --smoke --out DIR   # CPU, gloo

Every rank builds the same model (same seed, bf16 on ``cuda:LOCAL_RANK``; float32 on the CPU) and
the same random prompt; a warm-up prefill at the cell's length, then ``--repeats`` timed ones
(median; a barrier before each, the clock of rank 0, which waits for the last rank's logits). With
N = 1 the prefill is ``model.prefill`` in ``--chunk-size`` chunks, so the rows of the runs with
1, 2 and 4 GPUs in one ``cp.csv`` give the speed-up (``yoco report`` does not read this file; the
script prints the ratio to the one-GPU row of the same cell when there is one). ``--check``: the
YOCO's last logits against a one-process ``model.prefill`` on rank 0 (max relative error in the
row; ``oom`` where the one-GPU reference does not fit). An out-of-memory inside the context-parallel
prefill ends the run: the other ranks are then waiting in a collective that rank never joins, so
there is nothing to agree on; the rows measured before it are in ``cp.csv``. ``--no-warmup``
times the first prefill. Multicast stays off (``NCCL_NVLS_ENABLE=0`` ...), set here before NCCL starts.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

FIELDS = ["arch", "size", "ctx", "gpus", "parallel", "status", "prefill_s", "speedup_vs_1", "peak_gb_max_rank",
          "check_rel_err", "device", "torch", "date", "note"]
SMOKE = dict(arch="transformer,yoco", size="tiny", ctx="256,512")


def parse_ctx(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if p:
            mult = {"k": 1024, "m": 1 << 20}.get(p[-1], 1)
            out.append(int(float(p.rstrip("km")) * mult))
    return out


def build(arch: str, size: str, device: str, dtype, seed: int):
    from yoco_core import build_model
    from yoco_core.perf.runners import size_config

    return build_model(size_config(arch, size), device=device, dtype=dtype, seed=seed).eval()


def timed_prefill(model, ids, world: int, chunk, clock_dev: str) -> float:
    from yoco_core.parallel.context import context_parallel_prefill

    if world > 1:
        dist.barrier()
    if clock_dev.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if world > 1:
            logits, cache = context_parallel_prefill(model, ids, reserve=1)
        else:
            logits, cache = model.prefill(ids, chunk_size=chunk, reserve=1)
        logits.float().sum().item()           # the logits are there (broadcast from the last rank)
    if clock_dev.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def agree_max(flag: int, device: str) -> int:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([flag], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="transformer,yoco")
    p.add_argument("--size", default="3b")
    p.add_argument("--ctx", default="256k,512k,1m")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--chunk-size", default="64k", help="the one-GPU prefill's chunk (N = 1 only)")
    p.add_argument("--check", action="store_true", help="YOCO: compare the last logits with a one-process prefill")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="time the first prefill (the 1M Transformer cell on 2 GPUs is minutes each)")
    p.add_argument("--smoke", action="store_true", help="tiny models, short prompts, the CPU (gloo)")
    a = p.parse_args()
    if a.smoke:
        a.arch, a.size, a.ctx, a.check = SMOKE["arch"], SMOKE["size"], SMOKE["ctx"], True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and not a.smoke
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    from yoco_core.perf.hardware import device_name, is_out_of_memory, release

    chunk = parse_ctx(a.chunk_size)[0] if a.chunk_size.strip() not in ("0", "none") else None
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "cp.csv"
    earlier = list(csv.DictReader(path.open())) if path.is_file() else []
    rows = []
    for arch in [x.strip() for x in a.arch.split(",") if x.strip()]:
        model = build(arch, a.size, device, dtype, a.seed)
        for ctx in parse_ctx(a.ctx):
            g = torch.Generator(device=device).manual_seed(a.seed * 7919 + ctx)
            ids = torch.randint(0, model.config.vocab_size, (1, ctx), device=device, generator=g)
            row = {"arch": arch, "size": a.size, "ctx": ctx, "gpus": world, "parallel": f"cp{world}" if world > 1 else "",
                   "device": device_name(device), "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": ""}
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            # an out-of-memory on one rank leaves the others inside a collective it never joins:
            # nothing to agree on, so it ends the run (torchrun stops every rank); the rows so far
            # are on disk, and a run with fewer lengths continues
            if a.warmup:
                timed_prefill(model, ids, world, chunk, device)
            times = [timed_prefill(model, ids, world, chunk, device) for _ in range(max(1, a.repeats))]
            row["status"] = "ok"
            row["prefill_s"] = round(statistics.median(times), 4)
            peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
            row["peak_gb_max_rank"] = round(agree_max(int(peak * 1000), device) / 1000, 3)   # MB: the max
            one = [r for r in earlier + rows if r["arch"] == arch and r["size"] == a.size and int(r["ctx"]) == ctx
                   and int(r["gpus"]) == 1 and r["status"] == "ok" and r["device"] == row["device"]]
            if one and world > 1:
                row["speedup_vs_1"] = round(float(one[-1]["prefill_s"]) / row["prefill_s"], 3)
            if a.check and arch == "yoco" and world > 1:
                from yoco_core.parallel.context import context_parallel_prefill

                with torch.inference_mode():
                    last = context_parallel_prefill(model, ids, reserve=1)[0]     # its cache freed at once
                    if rank == 0:         # the others wait at the next barrier: no collective here
                        try:
                            ref = model.prefill(ids, chunk_size=chunk, reserve=1)[0]
                            err = float((last.double() - ref.double()).abs().max() / ref.double().abs().max())
                            row["check_rel_err"] = f"{err:.2e}"
                        except Exception as e:  # noqa: BLE001 - the one-GPU reference may not fit
                            if not is_out_of_memory(e):
                                raise
                            row["check_rel_err"] = "oom"
                            release(device)
                    del last
            if arch == "transformer" and world > 1:
                row["note"] = "prefill only: each rank keeps its piece's KV"
            rows.append(row)
            if rank == 0:                 # each row on disk as soon as it is measured
                new = not path.is_file()
                with path.open("a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=FIELDS)
                    if new:
                        w.writeheader()
                    w.writerow(row)
                print(f"{arch:<12} {ctx:>8} {world} GPU(s) {row['status']:<4} prefill {row.get('prefill_s', '-')} s "
                      f"peak {row.get('peak_gb_max_rank', '-')} GB speed-up {row.get('speedup_vs_1', '-')} "
                      f"check {row.get('check_rel_err', '-')}", flush=True)
        del model
        release(device)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
