"""The machine a measurement runs on: its name, memory and library versions, a clock (CUDA events
or ``perf_counter``), releasing memory between cells, and the measured ceilings that achieved rates
are reported against: the dense matmul rate (prefill; for fp8, ``torch._scaled_mm``'s on float8
operands), the read bandwidth (decode, which only reads) and, for reference, the device copy
bandwidth (read + write)."""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({model or platform.machine() or 'unknown'}, {os.cpu_count()} cores)"


def device_memory(device) -> int | None:
    """Total memory of the device in bytes (physical RAM for the CPU); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device) -> int | None:
    """Bytes a model built now on ``device`` may take; None if unknown.

    CUDA: the device's total memory. Not the free memory: the estimate it is compared with is good
    to tens of percent, another process's use of a shared GPU comes and goes, and running out on a
    GPU is a clean ``OutOfMemoryError`` (an ``oom`` row, or one line) anyway. CPU: ``MemAvailable``
    of ``/proc/meminfo`` (physical RAM where there is none), lowered to what a cgroup memory limit
    (``memory.max`` less ``memory.current``) and ``ulimit -v`` (``RLIMIT_AS`` less this process's
    address space) leave, since there running out means swapping or the OOM killer, not an error."""
    device = torch.device(device)
    if device.type == "cuda":
        return device_memory(device)
    ram = _meminfo_kb("MemAvailable", "/proc/meminfo")
    ram = device_memory(device) if ram is None else ram
    have = [x for x in (ram, _cgroup_left(), _address_space_left()) if x is not None]
    return min(have) if have else None


def _meminfo_kb(field: str, path: str) -> int | None:
    """``FIELD:  N kB`` of a ``/proc`` status file, in bytes."""
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name == field:
                    return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_left() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _address_space_left() -> int | None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _meminfo_kb("VmSize", "/proc/self/status")
    if soft == resource.RLIM_INFINITY or size is None:
        return None
    return max(0, soft - size)


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure: ``MemoryError`` (Python's, e.g. under ``ulimit -v``), CUDA's
    ``OutOfMemoryError``, or the CPU allocator's ``RuntimeError`` ("can't allocate memory", "not
    enough memory")."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in msg for s in ("can't allocate memory", "not enough memory",
                                                                 "out of memory"))


def is_context_lost(e: BaseException) -> bool:
    """A CUDA error after which this process's CUDA context is unusable (every later CUDA call,
    a synchronize included, raises it again; seen on an H200: an illegal memory access):
    ``torch.AcceleratorError``, or a ``RuntimeError`` saying "CUDA error" or "illegal memory
    access". An out-of-memory (``is_out_of_memory``) is not one."""
    if is_out_of_memory(e):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(e, accelerator_error):
        return True
    return isinstance(e, RuntimeError) and ("CUDA error" in str(e) or "illegal memory access" in str(e))


def versions() -> dict[str, str]:
    try:
        import triton

        tv = triton.__version__
    except Exception:  # not installed, or its import fails on this platform
        tv = ""
    return {"torch": torch.__version__, "triton": tv}


def use_device(device) -> torch.device:
    """Make ``device`` the current CUDA device (events, streams and ``cuda:N`` all agree)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


class Clock:
    """CUDA events on a GPU (timestamps taken on the stream), ``perf_counter`` on the CPU."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def release(device) -> None:
    """Give back what the last cell held: collect cycles, empty the CUDA caching allocator."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_memory(device) -> None:
    """``release``, then start the peak-memory counters afresh (between a warm-up and its timing,
    and after each cell)."""
    release(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class Ceilings:
    matmul_tflops: float          # measured dense matmul rate in the run's dtype (fp8: torch._scaled_mm's)
    copy_tbs: float               # measured device copy bandwidth, bytes read + written, TB/s
    read_tbs: float = 0.0         # measured read bandwidth, bytes read, TB/s (0: not measured)
    matmul_n: int = 0


def timed_runs(clock: Clock, fn, reps: int, warm: int) -> list[float]:
    """The time of each of ``reps`` runs of ``fn`` after ``warm`` untimed ones."""
    for _ in range(warm):
        fn()
    clock.sync()
    times = []
    for _ in range(reps):
        a = clock.mark()
        fn()
        b = clock.mark()
        times.append(clock.seconds(a, b))
    return times


def median_seconds(clock: Clock, fn, reps: int, warm: int) -> float:
    """The median time of ``fn`` over ``reps`` runs after ``warm`` untimed ones."""
    return statistics.median(timed_runs(clock, fn, reps, warm))


def _matmul_seconds(clock: Clock, n: int, dtype, gen, reps: int) -> float:
    a = torch.randn(n, n, device=clock.device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=clock.device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=clock.device, dtype=dtype)
    return median_seconds(clock, lambda: torch.mm(a, b, out=out), reps, warm=3 if clock.cuda else 1)


def _scaled_mm_seconds(clock: Clock, n: int, out_dtype, gen, reps: int) -> float:
    """``torch._scaled_mm`` of two ``n x n`` float8 e4m3 matrices (random normal values, in the
    format's range) with row-wise float32 scales (one per row of the first, one per column of the
    second), the product in ``out_dtype``: the GEMM ``yoco_core.quant.Float8Linear`` runs, its
    operands already quantized."""
    e4m3 = torch.float8_e4m3fn
    a = torch.randn(n, n, device=clock.device, generator=gen).to(e4m3)
    b = torch.randn(n, n, device=clock.device, generator=gen).to(e4m3).t()     # column-major, as cuBLASLt wants
    scale_a = torch.ones(n, 1, device=clock.device, dtype=torch.float32)
    scale_b = torch.ones(1, n, device=clock.device, dtype=torch.float32)
    return median_seconds(clock, lambda: torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype),
                          reps, warm=3 if clock.cuda else 1)


def _copy_seconds(clock: Clock, numel: int, gen, reps: int) -> float:
    src = torch.rand(numel, device=clock.device, dtype=torch.float32, generator=gen)
    dst = torch.empty_like(src)
    return median_seconds(clock, lambda: dst.copy_(src), reps, warm=2 if clock.cuda else 1)


def _read_seconds(clock: Clock, numel: int, gen, reps: int) -> float:
    """The fastest of ``reps`` runs of each read kernel (``READERS``) over ``numel * 4`` bytes (each
    reads every byte once and writes next to nothing): the best run of the best kernel, not a
    median, since a ceiling is the most the device was seen to read. The kernels are the ones a
    decode step reads with, so that no step can read faster than its ceiling."""
    best = float("inf")
    for make in READERS.values():
        fn = make(clock.device, numel * 4, gen)[0]     # its buffers live in fn alone: freed before the next
        best = min(best, min(timed_runs(clock, fn, reps, warm=2 if clock.cuda else 1)))
        del fn
    return best


def _sum_reader(device, nbytes: int, gen):
    """A sum over float32 values. Each reader returns (the kernel to time, the tensors it reads)."""
    src = torch.rand(nbytes // 4, device=device, dtype=torch.float32, generator=gen)
    return src.sum, [src]


def _gemv_reader(device, nbytes: int, gen, width: int = 4096):
    """A bf16 matrix times a vector (how a batch-1 decode step reads its weights: cuBLAS's GEMV)."""
    a = torch.rand(max(1, nbytes // 2 // width), width, device=device, generator=gen).to(torch.bfloat16)
    x = torch.rand(width, device=device, generator=gen).to(torch.bfloat16)
    return (lambda: torch.mv(a, x)), [a, x]


def _decode_attention_reader(device, nbytes: int, gen, batch: int = 32, kv_heads: int = 8, group: int = 3,
                             head_dim: int = 128):
    """One query token per head over a KV cache of ``nbytes`` (keys and values; bf16 on CUDA, where
    the split-KV kernel runs, ``kernels.decode_attention``): how a decode step reads its cache.
    A batch of 32 rows of 8 KV heads, YOCO-3B's: on the H200 over 16 GiB it read 4.45 TB/s, one
    row 4.04, 128 rows 4.34 (the sum 4.34, a GEMV 4.28).
    """
    from ..kernels.decode_attention import decode_attention

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    elem = torch.tensor([], dtype=dtype).element_size()
    cap = max(1, nbytes // (2 * batch * kv_heads * head_dim * elem))
    k, v = (torch.rand(batch, kv_heads, cap, head_dim, device=device, generator=gen).to(dtype) for _ in range(2))
    q = torch.rand(batch, kv_heads * group, head_dim, device=device, generator=gen).to(dtype)
    length = torch.tensor([cap], device=device)
    return (lambda: decode_attention(q, k, v, length)), [k, v, q]


# the read kernels timed for the read ceiling (the fastest counts)
READERS = {"sum": _sum_reader, "gemv": _gemv_reader, "decode attention": _decode_attention_reader}


def _read_bytes(device) -> int:
    """Bytes each read kernel of the read ceiling reads: on CUDA 16 GiB (or a sixth of the free
    memory: the GEMV's matrix is made in float32 first), since over 1 GiB a read's ramp-up and tail
    cost several percent (H200: the decode attention kernel read 3.5 TB/s over 1 GiB, 4.36 over 8,
    4.45 over 16; YOCO-3B decoded at batch 32 and 1M reading 4.49); on the CPU 64 MiB."""
    device = torch.device(device)
    if device.type != "cuda":
        return 64 << 20
    free = torch.cuda.mem_get_info(device)[0]
    return max(1 << 30, min(16 << 30, free // 6))


READ_REPS = {"cuda": 20, "cpu": 5}     # runs of each read kernel timed (the fastest is kept)


@torch.inference_mode()
def measure_ceilings(device, dtype: torch.dtype, matmul_n: int | None = None,
                     copy_bytes: int | None = None, reps: int | None = None, fp8: bool = False) -> Ceilings:
    """The matmul rate (``n^3`` products of random normal matrices, median of ``reps``; with
    ``fp8`` ``torch._scaled_mm``'s on float8 e4m3 operands with row-wise scales, the product in
    ``dtype``, at the same ``n``: the rate an fp8 model's projections run at), the
    device-to-device copy bandwidth (median of ``reps``, counting the bytes read and the bytes
    written) and the read bandwidth (``READERS``: a sum, a GEMV and the decode attention kernel,
    each over as many bytes, counting the bytes read; the fastest of ``READ_REPS`` runs of the
    fastest kernel, so a decode step's share of it is measured against the most the device was
    seen to read with the kernels a decode step reads with).

    Defaults: on CUDA ``n = 8192``, 1 GiB copied (far more than any L2 cache) and 16 GiB read
    (``_read_bytes``); on the CPU ``n = 1024`` and 64 MiB (of which a large L3 cache may hold
    part). ``copy_bytes`` sets both sizes."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = matmul_n or (8192 if cuda else 1024)
    nbytes = copy_bytes or ((1 << 30) if cuda else (64 << 20))
    read_reps = reps or READ_REPS["cuda" if cuda else "cpu"]
    reps = reps or (10 if cuda else 3)
    clock = Clock(device)
    gen = torch.Generator(device=device).manual_seed(1234)
    matmul = _scaled_mm_seconds if fp8 else _matmul_seconds
    tflops = 2.0 * n ** 3 / matmul(clock, n, dtype, gen, reps) / 1e12
    numel = nbytes // 4
    tbs = 2.0 * numel * 4 / _copy_seconds(clock, numel, gen, reps) / 1e12
    read_numel = (copy_bytes or _read_bytes(device)) // 4
    read = read_numel * 4 / _read_seconds(clock, read_numel, gen, read_reps) / 1e12
    release(device)
    return Ceilings(matmul_tflops=tflops, copy_tbs=tbs, read_tbs=read, matmul_n=n)
