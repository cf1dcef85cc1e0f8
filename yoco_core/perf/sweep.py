"""One ``yoco profile`` sweep: timing a cell, and the policy around the cells (skip by estimate,
out-of-memory blockers, one runner per model, the result record).

Timing (``measure_cell``): random token ids; a warm-up (the same prefill and a few decode steps,
so that compilation, Triton autotuning and cuDNN's per-length attention builds fall outside the
timing: a 4K warm-up left them inside the Transformer's timed 128K prefill); prefill
timed with CUDA events (``perf_counter`` on the CPU) around the whole prefill, the median of at
least ``repeats`` runs, and of up to ``MAX_PREFILL_REPEATS`` while their total stays under
``PREFILL_BUDGET_S`` (a single 4K prefill after the warm-up measured 2-3x its steady time, so short
cells are repeated; a long one is timed once); then ``gen_tokens`` (or ``steps``)
greedy decode steps, each timed on its own, the median reported (and their total, from the first
step's start to the last one's end). Peak memory
(``torch.cuda.max_memory_allocated/reserved``) is reset before the prefill, so it covers prefill
and decode. ``run_cell`` turns an out-of-memory error into a result (status ``oom``), releases the
memory, and returns; any other error becomes status ``error`` with its first line. A CUDA error
that loses the CUDA context (``hardware.is_context_lost``: an illegal memory access, ...; every
later CUDA call raises it again) is an ``error`` too, and nothing more is run: the sweep raises
``ContextLost`` with that cell's record instead of yielding it.

The sweep (``Plan``, ``sweep``): the cells are (arch, size, batch, ctx) in that nesting order; on a
model folder (``Plan.folder``, ``yoco profile -m``) the one size is the folder's name and each arch
one way of running it (``runners.FolderModel``). A
cell whose analytic memory estimate exceeds the device's memory, or that is at least as large in
context and batch as a cell of the same model that already ran out of memory (``Blockers``), is
``skipped`` without building anything; the others are measured, one runner built per model and
closed before the next. Every cell gives one ``Record`` (a ``profile.csv`` row).

The throughput protocol (``Plan.throughput``; the YOCO paper's Fig. 6, arXiv 2405.05254): a cell is
(arch, size, ctx), its batch chosen at run time: the largest whose analytic memory estimate fits
the device's memory (``analytic.largest_batch``; at most ``Plan.batch_cap``, and stepped down from
any batch that already ran out of memory at this context or a shorter one), then confirmed by
running it: an out-of-memory is recorded as its own row (status ``oom``) and the batch steps down
(``step_down``) until one runs or batch 1 fails. Every row records the cap (``Record.batch_cap``),
and the note of one the cap limited says which cap: ``--batch``'s or the default of ``--batch auto``
(``Plan.batch_cap_auto``). The measurement is a full cell's (warm-up at that
batch and length, the batch prefilled, then decoded): throughput = batch x ``gen_tokens`` /
(prefill time + decode time), the generated tokens only (not the prompts'). With ``timed_steps`` below ``gen_tokens`` only that many steps run
and the decode time of all ``gen_tokens`` is extrapolated from them by the analytic bytes per
step (``analytic.decode_bytes_over``: step ``i`` reads the cache at ``ctx + i``); the row's note
says so, with the factor. With ``timed_prefills`` (``--timed-prefills N``) the batch is prefilled
one sequence at a time, as a server with chunked prefill does (``_one_at_a_time``): first the
decode half, a decode-only cell's at the batch (``_measure_decode_only``: a cache of random values
at the context, the same buffers and work per step; so an out-of-memory there steps the batch
down before any prefill is spent), then ``measure_cell`` at batch 1 with ``N`` (at most the batch)
timed prefills after its usual warm-up (a batch-1 prefill of the whole length) and no decode
steps; prefill time = batch x their median (the batch's prefills are independent and alike), the
peak memory the larger phase's; the note says so. Its batch is the largest the one-at-a-time
estimate fits (``analytic.estimate_memory(one_at_a_time=True)``: the batch's cache beside one
sequence's prefill chunk, not the whole batch's chunk).

fp8 (``Plan.fp8``, ``yoco profile --dtype fp8``): our models built in ``Plan.dtype`` (the compute
dtype), then their projections quantized (``runners.build_runner(fp8=True)``,
``yoco_core.quant.quantize_fp8``); the rows say dtype ``fp8`` (``Plan.dtype_name``: part of the
resume key and of the blockers' setting), the cost model counts the projections' weights in float8
(``analytic``'s ``fp8``) and the caller measures the matmul ceiling as fp8's.

Shares (``shares``): prefill FLOP/s over the matmul ceiling, decode bytes/s over the read ceiling,
which a decode step that reads faster than the read kernels raises for the rest of the run
(``_read_ceiling_for``), so no share exceeds 1.

Tensor parallel (``Plan.tp`` ranks in ``Plan.group``, ``yoco_core.parallel.tensor``): every rank
runs the same sweep in lockstep, its model built with the same seed and sharded
(``apply_tensor_parallel``); the cost model is one rank's (``analytic``: ``tp``), so the skips and
the throughput batches are chosen for the memory of one device; the prefills timed stop when any
rank's clock says so (``_any_rank``: each is a collective of all); after each cell the ranks agree
on its status (the worst of theirs: ``_agreed``), so an out-of-memory on one rank steps every rank
down alike (one that stops a rank inside a collective the others wait in cannot be recovered:
the run waits there). The timing and the rows are the caller's first rank's.

Fault injection for tests: ``YOCO_PROFILE_INJECT_OOM="arch:ctx:batch[,arch:ctx:batch...]"`` makes
those cells raise ``torch.OutOfMemoryError`` right after their prefill (cache allocated), so the
whole OOM path, clean-up included, runs without needing the memory to run out;
``YOCO_PROFILE_INJECT_CUDA_ERROR`` (same form) makes them raise the ``RuntimeError`` of an illegal
memory access there (the lost-context path; on the CPU nothing is lost, only the path is run).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from ..config import ModelConfig
from ..dtypes import canonical, element_size, name_of
from ..errors import first_line
from .analytic import cell_analytics, decode_bytes_over, effective_chunk, largest_batch
from .hardware import (Ceilings, Clock, available_memory, device_name, is_context_lost, is_out_of_memory, release,
                       reset_memory, use_device, versions)
from .runners import FolderModel, Runner, build_folder_runner, build_runner, model_name, size_config
from .notes import COLD_PREFILL, ONE_SEQUENCE

DEFAULT_YOCO_CHUNK = 8192            # prefill chunk of ``--chunk-size auto`` for our yoco (see default_chunk)
DEFAULT_TRANSFORMER_CHUNK = 65536    # ... and for our Transformer
WARMUP_TOKENS = 4096                 # warm-up cache length for decode-only cells
WARMUP_STEPS = 3                     # warm-up decode steps
PREFILL_BUDGET_S = 1.0               # short prefills are timed again while their total stays under this
MAX_PREFILL_REPEATS = 5              # ... up to this many times (the median is reported)
STEP_DOWN = 0.8                      # a throughput batch that ran out of memory is retried at 0.8 x
INJECT_ENV = "YOCO_PROFILE_INJECT_OOM"
INJECT_CUDA_ERROR_ENV = "YOCO_PROFILE_INJECT_CUDA_ERROR"



# -- one cell --------------------------------------------------------------------------------
def default_chunk(arch: str) -> int | None:
    """The prefill chunk of ``--chunk-size auto``: 8K tokens for our YOCO (YOCO-3B at 1M on an H100:
    12.48 GB peak and 6.01 s with 8K chunks, 12.55 GB and 5.93 s with 16K; its prefill memory is
    then bounded); 64K for our Transformer (the preset baselines and the converted families: a
    Llama-3.1-8B shape at 128K on an H200 took 10.72 s unchunked with a 47.8 GB peak, 10.72 s in
    64K chunks with 40.6 GB, ``scripts/diag_prefill_kernels.py --parts chunks``: the same time,
    less memory);
    unchunked for transformers' models (as users run them; later chunks would take its masked
    attention) and for fla's YOCO, whose
    cache takes only one new token per call after the first (measured: a second prefill chunk
    fails with "only support q_len == 1 for decoding" in flash-linear-attention 0.6.0)."""
    return {"yoco": DEFAULT_YOCO_CHUNK, "transformer": DEFAULT_TRANSFORMER_CHUNK}.get(arch)


def _injected(env: str, arch: str, ctx: int, batch: int) -> bool:
    cells = {c.strip() for c in os.environ.get(env, "").split(",") if c.strip()}
    return f"{arch}:{ctx}:{batch}" in cells


def _inject_faults(arch: str, ctx: int, batch: int) -> None:
    """The faults the tests inject into a cell (module docstring)."""
    if _injected(INJECT_ENV, arch, ctx, batch):
        raise torch.cuda.OutOfMemoryError(f"injected out-of-memory ({INJECT_ENV}) at {arch} ctx {ctx} batch {batch}")
    if _injected(INJECT_CUDA_ERROR_ENV, arch, ctx, batch):
        raise RuntimeError(f"CUDA error: an illegal memory access was encountered (injected, {INJECT_CUDA_ERROR_ENV}, "
                           f"at {arch} ctx {ctx} batch {batch})\nCUDA kernel errors might be asynchronously reported")


@dataclass
class CellResult:
    status: str                       # ok, oom or error
    prefill_s: float | None = None
    decode_ms: float | None = None
    decode_s: float | None = None     # the timed decode steps together, first start to last end
    peak_alloc: int | None = None
    peak_reserved: int | None = None
    cache_bytes: int | None = None
    note: str = ""
    lost: bool = False                # the error lost the CUDA context (hardware.is_context_lost)
    one_sequence: bool = False        # it failed prefilling one sequence (--timed-prefills): no batch helps
    warmup_prefill_s: float | None = None   # the warm-up's prefill (one-time builds included)
    cold: bool = False                # timed cold: the warm-up's prefill is the timed one (cold_after)


def decode_reserve(gen_tokens: int) -> int:
    """Cache positions reserved beyond the context: the timed steps, the warm-up steps, one spare.
    The memory estimate and the cache a cell allocates both use it."""
    return gen_tokens + WARMUP_STEPS + 1


def _cell_generator(dev, seed: int, ctx: int, batch: int) -> torch.Generator:
    """The random token ids of one cell: the same for every arch, different per cell."""
    return torch.Generator(device=dev).manual_seed(seed * 1_000_003 + ctx * 131 + batch)


def measure_cell(runner: Runner, ctx: int, batch: int, gen_tokens: int, chunk_size: int | None,
                 repeats: int = 1, seed: int = 0, decode_only: bool = False,
                 steps: int | None = None, prefills: int | None = None,
                 cold_after: float | None = None) -> CellResult:
    """Time one cell (raises on out-of-memory; ``run_cell`` catches). See the module docstring.
    ``decode_only``: no prefill; decoding starts from ``runner.random_cache`` (prefill_s is None).
    ``steps``: the decode steps run and timed (default ``gen_tokens``; the cache has room for
    ``gen_tokens`` either way). ``prefills``: exactly this many prefills timed (``--timed-prefills``),
    instead of at least ``repeats`` and more while they are short. The warm-up's prefill is timed too
    (``warmup_prefill_s``); with ``cold_after`` (seconds), a warm-up prefill longer than that is the
    cell's only one (``cold``): its time is the prefill's, one-time builds included, and the decode
    steps run on its cache, for cells too long to prefill twice (Transformer-3B at 1M: ~310 s each)."""
    steps = gen_tokens if steps is None else steps
    if decode_only:
        return _measure_decode_only(runner, ctx, batch, gen_tokens, seed, steps)
    dev = runner.device
    clock = Clock(dev)
    reserve = decode_reserve(gen_tokens)
    chunk = effective_chunk(chunk_size, ctx) or None
    ids = torch.randint(0, runner.vocab_size, (batch, ctx), device=dev, generator=_cell_generator(dev, seed, ctx, batch))

    with torch.inference_mode():
        # warm-up: a whole prefill and a few decode steps at this batch. The whole length, because
        # kernels are built per length: cuDNN's attention per sequence length (a 4K warm-up left
        # its build inside the Transformer's timed 128K prefill), fla's Triton kernels per length
        # (4-7 s of compilation at 8K-16K), the last position's attention over the whole cache;
        # with the timed prefill's cache, so that it also finds out whether the cell fits
        if cold_after is not None:
            reset_memory(dev)         # the peaks may have to cover this prefill
        a = clock.mark()
        logits, cache = runner.prefill(ids, chunk, reserve)
        b = clock.mark()
        warm = clock.seconds(a, b)
        cold = cold_after is not None and _any_rank(warm > cold_after, runner)
        if cold:
            prefill_times = [warm]
        else:
            for _ in range(WARMUP_STEPS):
                logits, cache = runner.decode(logits.argmax(-1, keepdim=True), cache)
            logits = cache = None
            runner.end_cell()         # the warm-up's decoder (graph, cache) must not outlive it
            reset_memory(dev)
            prefill_times = []
        while not cold:
            logits = cache = None          # free the previous cache before the next prefill
            a = clock.mark()
            logits, cache = runner.prefill(ids, chunk, reserve)
            b = clock.mark()
            prefill_times.append(clock.seconds(a, b))
            n = len(prefill_times)
            enough = n >= prefills if prefills else \
                n >= max(1, repeats) and (n >= MAX_PREFILL_REPEATS or sum(prefill_times) >= PREFILL_BUDGET_S)
            if _any_rank(enough, runner):
                break
        res = _timed_decode(runner, clock, logits.argmax(-1, keepdim=True), cache, ctx, batch, steps)
    res.prefill_s = statistics.median(prefill_times)
    res.warmup_prefill_s, res.cold = warm, cold
    if cold:
        res.note = _join(res.note, f"{COLD_PREFILL} the warm-up's own ({warm:.4g} s, over --cold-after "
                                   f"{cold_after:g} s), one-time builds included; not prefilled again")
    return res


def _any_rank(flag: bool, runner: Runner) -> bool:
    """``flag`` of any rank of the runner's tensor-parallel group (a maximum all-reduced over it):
    a decision made on each rank's own clock, such as how many prefills to time, taken alike by
    all of them (each prefill is a collective of all); this rank's alone without a group."""
    from ..parallel.tensor import max_over

    return bool(max_over(runner.group, int(flag), runner.device))


def _timed_decode(runner: Runner, clock: Clock, tok, cache, ctx: int, batch: int, steps: int) -> CellResult:
    """The part every cell shares once its cache is filled: the injected faults (tests), the cache
    bytes, the decoder set-up, ``steps`` individually timed greedy steps, the memory peaks."""
    _inject_faults(runner.arch, ctx, batch)
    nbytes = runner.cache_nbytes(cache)
    if steps:                         # none (a prefill timed alone): no decoder to build, nor its memory
        runner.prepare_decode(cache)
    marks = []
    for _ in range(steps):
        a = clock.mark()
        logits, cache = runner.decode(tok, cache)
        tok = logits.argmax(-1, keepdim=True)
        b = clock.mark()
        marks.append((a, b))
    clock.sync()
    times = [clock.seconds(a, b) for a, b in marks]
    res = CellResult(status="ok", decode_ms=statistics.median(times) * 1e3 if times else None, cache_bytes=nbytes,
                     decode_s=clock.seconds(marks[0][0], marks[-1][1]) if marks else None)
    if clock.cuda:
        res.peak_alloc = torch.cuda.max_memory_allocated(runner.device)
        res.peak_reserved = torch.cuda.max_memory_reserved(runner.device)
    return res


def _measure_decode_only(runner: Runner, ctx: int, batch: int, gen_tokens: int, seed: int,
                         steps: int) -> CellResult:
    dev = runner.device
    clock = Clock(dev)
    tok = torch.randint(0, runner.vocab_size, (batch, 1), device=dev, generator=_cell_generator(dev, seed, ctx, batch))
    with torch.inference_mode():
        cache = runner.random_cache(batch, min(ctx, WARMUP_TOKENS), WARMUP_STEPS + 1, seed)   # warm-up
        for _ in range(WARMUP_STEPS):
            _, cache = runner.decode(tok, cache)
        cache = None
        runner.end_cell()
        reset_memory(dev)
        cache = runner.random_cache(batch, ctx, decode_reserve(gen_tokens), seed)
        res = _timed_decode(runner, clock, tok, cache, ctx, batch, steps)
    res.note = "decode only: cache of random values, no prefill"
    return res


def run_cell(runner: Runner, ctx: int, batch: int, gen_tokens: int, chunk_size: int | None,
             repeats: int = 1, seed: int = 0, decode_only: bool = False, steps: int | None = None,
             prefills: int | None = None, cold_after: float | None = None) -> CellResult:
    """``measure_cell`` with out-of-memory as a result: on OOM (or any other error) the cell's
    tensors are dropped with the exception, the allocator is emptied, and the status says so. A
    CUDA error that lost the context (raised by the cell, or surfacing when the memory is released
    after it) is an ``error`` with ``lost`` set, and nothing more is asked of the device."""
    try:
        res = measure_cell(runner, ctx, batch, gen_tokens, chunk_size, repeats, seed, decode_only, steps=steps,
                           prefills=prefills, cold_after=cold_after)
    except Exception as e:  # noqa: BLE001 - every failure of a cell is recorded, the sweep goes on
        lost = is_context_lost(e)
        res = CellResult(status="oom" if is_out_of_memory(e) else "error", note=first_line(e), lost=lost)
    if not res.lost:
        try:
            reset_memory(runner.device)
        except Exception as e:  # an asynchronous CUDA error reported at the synchronize
            if not is_context_lost(e):
                raise
            res = CellResult(status="error", note=first_line(e), lost=True)
    return res


def shares(analytic: dict | None, res: CellResult, ceil: Ceilings | None) -> dict[str, float | None]:
    """Achieved TFLOP/s and the shares of the measured ceilings (None where not measurable, and
    without a cost model): prefill FLOP/s over the matmul rate, decode bytes/s over the read
    bandwidth (a decode step only reads; the copy bandwidth counts a write too)."""
    out: dict[str, float | None] = {"prefill_tflops": None, "prefill_share": None, "decode_share": None}
    if analytic is None:
        return out
    if res.prefill_s:
        out["prefill_tflops"] = analytic["flops"] / res.prefill_s / 1e12
        if ceil and ceil.matmul_tflops > 0:
            out["prefill_share"] = out["prefill_tflops"] / ceil.matmul_tflops
    if res.decode_ms and ceil and ceil.read_tbs > 0:
        out["decode_share"] = analytic["decode_bytes"] / (res.decode_ms / 1e3) / (ceil.read_tbs * 1e12)
    return out


# -- the sweep -------------------------------------------------------------------------------
AUTO_CHUNK = -1                      # Plan.chunk: each arch's default_chunk
GB = 1e9


@dataclass(frozen=True)
class Cell:
    arch: str
    size: str
    model: str                       # model_name: profile.csv's model column, what blockers key on
    batch: int                       # 0 in a throughput plan's cells: chosen when measured
    ctx: int


@dataclass
class Plan:
    """What one ``yoco profile`` run measures: every (arch, size, batch, ctx) of these lists; with
    ``folder``, every arch on that model folder (``sizes`` is then its name alone). With
    ``throughput`` every (arch, size, ctx), the batch chosen when measured (at most ``batch_cap``;
    ``batch_cap_auto``: that cap is ``--batch auto``'s default, not one the user gave), ``timed_steps``
    of the ``gen_tokens`` steps timed (None: all), ``timed_prefills``: the batch prefilled one
    sequence at a time, that many of them timed (None: the batch prefilled whole). ``fp8``: our
    models' projections in float8 (``quantize_fp8``), the rest in ``dtype``; the rows' dtype
    ``fp8``."""
    archs: list[str]
    sizes: list[str]
    ctxs: list[int]
    batches: list[int]
    gen_tokens: int = 128
    chunk: int | None = AUTO_CHUNK   # prefill chunk in tokens; None: unchunked; AUTO_CHUNK: per arch
    self_decoder: str = "gret"       # of arch yoco
    repeats: int = 1
    seed: int = 0
    decode_only: bool = False
    throughput: bool = False
    timed_steps: int | None = None
    timed_prefills: int | None = None
    cold_after: float | None = None  # seconds: a warm-up prefill longer than this is the timed one (measure_cell)
    batch_cap: int | None = None
    batch_cap_auto: bool = False
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    folder: FolderModel | None = None
    tp: int = 1                      # tensor-parallel ranks per cell
    fp8: bool = False                # projections in float8 (ours only; dtype the compute dtype)
    group: object = dataclasses.field(default=None, compare=False, repr=False)   # theirs (None: one)

    @property
    def dtype_name(self) -> str:
        """profile.csv's ``dtype``: ``fp8`` for float8 projections, else the model dtype's name."""
        return "fp8" if self.fp8 else name_of(self.dtype)

    @property
    def parallel(self) -> str:
        """profile.csv's ``parallel``: the layout, ``tp2`` (empty for one process)."""
        return f"tp{self.tp}" if self.tp > 1 else ""

    @property
    def mode(self) -> str:
        """profile.csv's ``mode``: full (prefill, then decode), decode-only or throughput."""
        return "throughput" if self.throughput else "decode-only" if self.decode_only else "full"

    @property
    def steps(self) -> int:
        """The decode steps a cell runs and times (profile.csv's ``timed_steps``)."""
        return self.timed_steps or self.gen_tokens

    @property
    def reserve(self) -> int:
        return decode_reserve(self.gen_tokens)

    @property
    def max_tokens(self) -> int:
        return max(self.ctxs) + self.reserve

    def estimate_words(self) -> str:
        """How a throughput batch's memory was estimated, where it is not the batched prefill's."""
        return " (one sequence prefilled at a time)" if self.timed_prefills else ""

    def cap_words(self) -> str:
        """The batch cap in a note: ``the cap of --batch`` or ``the default cap of 8 of --batch auto
        on the CPU``."""
        if not self.batch_cap_auto:
            return "the cap of --batch"
        where = "the CPU" if torch.device(self.device).type == "cpu" else self.device
        return f"the default cap of {self.batch_cap} of --batch auto on {where}"

    def model_name(self, arch: str, size: str) -> str:
        """profile.csv's model column of (arch, size)."""
        return self.folder.model_name(arch) if self.folder else model_name(arch, size, self.self_decoder)

    def cells(self) -> list[Cell]:
        batches = [0] if self.throughput else self.batches
        return [Cell(a, s, self.model_name(a, s), b, c)
                for a in self.archs for s in self.sizes for b in batches for c in self.ctxs]

    def config_for(self, cell: Cell) -> ModelConfig | None:
        """The config the cost model reads for ``cell`` (None: a folder only transformers runs)."""
        if self.folder:
            return self.folder.config_for(cell.arch, self.self_decoder)[0]
        return size_config(cell.arch, cell.size, self.self_decoder)

    def note_for(self, cell: Cell) -> str:
        """What every row of ``cell``'s model says: on a folder, what the YOCO of its shape differs
        in, that there is no cost model (a model_type only transformers runs), and positions past
        its config's maximum (run all the same: the RoPE extrapolates)."""
        if not self.folder:
            return ""
        note = self.folder.config_for(cell.arch, self.self_decoder)[1]
        if self.folder.config is None:
            note = f"no cost model (no native config of model_type {self.folder.model_type!r})"
        top = self.folder.config.max_seq_len if self.folder.config else None
        if top and cell.arch != "yoco" and cell.ctx + self.reserve > top:
            note = _join(note, f"{cell.ctx + self.reserve} positions, past its config's max_seq_len {top}")
        return note

    def build(self, cell: Cell) -> Runner:
        """The runner of ``cell``'s model (random weights for a preset, the folder's for -m),
        sharded over ``group`` with tensor parallel (its ``params`` still the whole model's)."""
        if self.folder:
            if self.fp8:
                raise ValueError("fp8 does not run -m folders yet")
            runner = build_folder_runner(cell.arch, self.folder, self.device, self.dtype, self.max_tokens,
                                         self.self_decoder, self.seed)
        else:
            runner = build_runner(cell.arch, cell.size, self.device, self.dtype, max_tokens=self.max_tokens,
                                  self_decoder=self.self_decoder, seed=self.seed, fp8=self.fp8)
        if self.group is not None:
            from ..parallel.tensor import apply_tensor_parallel

            apply_tensor_parallel(runner.model, self.group)
            runner.group = self.group
        return runner

    def chunk_for(self, cell: Cell) -> int:
        """The prefill chunk of a cell; 0: unchunked (and for decode-only cells, which have none)."""
        if self.decode_only:
            return 0
        return effective_chunk(default_chunk(cell.arch) if self.chunk == AUTO_CHUNK else self.chunk, cell.ctx)


@dataclass
class Machine:
    """The device a sweep runs on, as its records name it."""
    name: str
    memory: int | None                       # bytes a model may take (hardware.available_memory: the
                                             # GPU's total, the CPU's available RAM); a cell estimated
                                             # above it is skipped
    torch: str                               # versions
    triton: str
    ceilings: Ceilings | None = None         # measured by the caller when there are cells to run
    budget: bool = False                     # memory is a budget the user gave, not the device's
    sharing: int = 1                         # processes sharing the device's memory (CPU ranks)

    @classmethod
    def of(cls, device, memory: int | None = None, sharing: int = 1) -> Machine:
        """Make ``device`` the current one and describe it; ``memory``: a budget in bytes instead
        of what the device has (None: the device's; any other value, however small, is kept), for
        each process. ``sharing`` processes on the CPU share its RAM: each may take that share of
        it (a GPU is each rank's own)."""
        use_device(device)
        budget = memory is not None
        sharing = sharing if torch.device(device).type == "cpu" and not budget else 1
        have = memory if budget else available_memory(device)
        if have is not None and sharing > 1:
            have //= sharing
        return cls(device_name(device), have, **versions(), budget=budget, sharing=sharing)

    def memory_words(self) -> str:
        """The memory a cell may take, in a note: ``the device's 80.0 GB available``, ``the
        --memory-gb budget of 0.5 GB`` or ``a 1/2 share of the device's 16.0 GB available``."""
        if self.budget:
            return f"the --memory-gb budget of {self.memory / GB:.3g} GB"
        if self.sharing > 1:
            return f"a 1/{self.sharing} share of the device's {self.memory * self.sharing / GB:.1f} GB available"
        return f"the device's {self.memory / GB:.1f} GB available"


@dataclass
class Record:
    """One cell's result, field for field a ``profile.csv`` row (None: empty); the CLI's schema
    orders, validates and writes it, and stamps ``date``."""
    arch: str
    model: str
    size: str
    params: int | None
    ctx: int
    batch: int
    batch_cap: int | None = None
    status: str = ""
    prefill_s: float | None = None
    warmup_prefill_s: float | None = None
    decode_ms: float | None = None
    decode_tok_s: float | None = None
    decode_s: float | None = None
    throughput_tok_s: float | None = None
    peak_alloc_gb: float | None = None
    peak_reserved_gb: float | None = None
    cache_gb: float | None = None
    est_gb: float | None = None
    prefill_tflops: float | None = None
    prefill_share: float | None = None
    decode_gb_per_token: float | None = None
    decode_share: float | None = None
    matmul_tflops: float | None = None
    copy_tbs: float | None = None
    read_tbs: float | None = None
    mode: str = ""
    gen_tokens: int | None = None
    timed_steps: int | None = None
    timed_prefills: int | None = None
    chunk_size: int | None = None
    device: str = ""
    gpus: int | None = None
    parallel: str = ""
    dtype: str = ""
    torch: str = ""
    triton: str = ""
    date: str = ""
    note: str = ""

    def row(self) -> dict:
        return asdict(self)


class Blockers:
    """The cells that ran out of memory, per model: a cell of that model at least as large in
    context and batch is skipped. Keyed by the model name, so that a gRet and an SWA YOCO of one
    size never block each other."""

    def __init__(self):
        self._oom: dict[str, list[tuple[int, int]]] = {}

    @classmethod
    def from_rows(cls, rows, dtype_name: str) -> Blockers:
        """Seeded from the rows of an existing ``profile.csv`` (``--resume``), those in this dtype."""
        out = cls()
        for r in rows:
            if r["status"] == "oom" and canonical(r["dtype"]) == dtype_name:
                out.add(r["model"], int(r["ctx"]), 1 if ONE_SEQUENCE in r.get("note", "") else int(r["batch"]))
        return out

    def add(self, model: str, ctx: int, batch: int) -> None:
        self._oom.setdefault(model, []).append((ctx, batch))

    def blocker(self, cell: Cell) -> tuple[int, int] | None:
        """The (ctx, batch) that rules ``cell`` out, if any."""
        return next(((c, b) for c, b in self._oom.get(cell.model, []) if cell.ctx >= c and cell.batch >= b), None)

    def smallest(self, model: str, ctx: int) -> int | None:
        """The smallest batch of ``model`` that ran out of memory at ``ctx`` or a shorter context."""
        ruled = [b for c, b in self._oom.get(model, []) if ctx >= c]
        return min(ruled) if ruled else None


class ContextLost(Exception):
    """A cell's CUDA error lost the CUDA context: nothing more can run in this process. ``record``
    is that cell's row (status ``error``), for the caller to keep; the message is one line."""

    def __init__(self, record: Record, message: str):
        super().__init__(message)
        self.record = record


class _Models:
    """One runner at a time: built at the first measured cell of a model, closed at the next model.
    A model that fails to build fails each of its cells with the same status and note. ``lost``:
    the first line of a CUDA error that lost the context (the runner is then dropped, not closed:
    closing synchronizes, which raises it again)."""

    def __init__(self, plan: Plan):
        self.plan, self.model, self.runner = plan, None, None
        self.failure = ("error", "")
        self.lost: str | None = None

    def runner_for(self, cell: Cell, emit) -> Runner | None:
        if cell.model != self.model:
            self.close()
            self.model = cell.model
            emit("build", cell)
            try:
                self.runner = self.plan.build(cell)
            except Exception as e:  # noqa: BLE001 - recorded on each of its cells
                self.failure = ("oom" if is_out_of_memory(e) else "error", "building the model: " + first_line(e))
                self.lost = first_line(e) if is_context_lost(e) else None
                if self.lost is None:
                    release(self.plan.device)
            emit("cell", cell)
        return self.runner

    def close(self) -> None:
        if self.runner is not None and self.lost is None:
            self.runner.close()
        self.runner = None

    def checked(self, rec: Record, tokens) -> Record:
        """``rec``, or ``ContextLost`` with it if its cell lost the CUDA context."""
        if self.lost is not None:
            raise ContextLost(rec, f"CUDA error in {rec.arch} ctx {tokens(rec.ctx)} batch {rec.batch}: {self.lost}; "
                                   "the CUDA context is lost")
        return rec


def sweep(plan: Plan, cells: list[Cell], machine: Machine, blockers: Blockers,
          on_event: Callable[[str, Cell], None] | None = None,
          tokens: Callable[[int], str] = str) -> Iterator[Record]:
    """Measure ``cells`` (those of ``plan`` still to do) in order and yield each one's ``Record`` as
    soon as it is known (a throughput cell: one per batch tried); ``blockers`` gains the cells that
    run out of memory. A cell that loses the CUDA context ends the sweep: ``ContextLost`` is raised
    with its record (not yielded). ``on_event(phase, cell)`` reports progress (phase ``cell``:
    measuring it, ``build``: building its model, ``done``: its last record given); ``tokens``
    writes a token count in a note (the CLI's ``4k``)."""
    emit = on_event or (lambda phase, cell: None)
    models = _Models(plan)
    try:
        for cell in cells:
            emit("cell", cell)
            if plan.throughput:
                yield from _throughput(plan, cell, machine, blockers, models, emit, tokens)
            else:
                yield models.checked(_measure(plan, cell, machine, blockers, models, emit, tokens), tokens)
            emit("done", cell)
    finally:
        models.close()


def step_down(batch: int) -> int:
    """The batch a throughput cell tries after ``batch`` ran out of memory (0 after batch 1)."""
    return max(0, min(batch - 1, int(batch * STEP_DOWN)))


def _first_batch(plan: Plan, cell: Cell, machine: Machine, blockers: Blockers) -> tuple[int, str]:
    """A throughput cell's first batch and why (its note): the largest the estimate fits in the
    machine's memory, at most the cap, and a step down (``step_down``) from the smallest batch that
    already ran out of memory at this context or a shorter one (so that a search resumed after an
    interruption tries the batches an uninterrupted one would)."""
    cap, memory = plan.batch_cap, machine.memory
    if memory is None:
        batch, why = (cap, f"{plan.cap_words()} (the device's memory is unknown)") if cap else \
            (1, "the device's memory is unknown")
    else:
        fits = largest_batch(plan.config_for(cell), cell.ctx, element_size(plan.dtype), memory,
                             plan.chunk_for(cell) or None, plan.reserve, plan.tp, bool(plan.timed_prefills),
                             fp8=plan.fp8)
        batch, why = fits, f"the largest the estimate{plan.estimate_words()} fits in {machine.memory_words()}"
        if cap is not None and cap < fits:
            batch, why = cap, f"{plan.cap_words()} (the estimate{plan.estimate_words()} fits {fits} in " \
                              f"{machine.memory_words()})"
    oom = blockers.smallest(cell.model, cell.ctx)
    if oom is not None and oom <= batch:
        batch, why = step_down(oom), f"stepped down from {oom} (out of memory)"
    return max(1, batch), why


def _throughput(plan: Plan, cell: Cell, machine: Machine, blockers: Blockers, models: _Models, emit,
                tokens) -> Iterator[Record]:
    """The records of one throughput cell: a row per batch tried, largest first (module docstring)."""
    batch, why = _first_batch(plan, cell, machine, blockers)
    while True:
        attempt = dataclasses.replace(cell, batch=batch)
        emit("cell", attempt)
        rec = _measure(plan, attempt, machine, blockers, models, emit, tokens)
        nxt = step_down(batch) if rec.status == "oom" else 0
        if nxt and blockers.smallest(cell.model, cell.ctx) == 1:     # one sequence's prefill ran out: no batch fits
            nxt = 0
        if rec.status in ("ok", "oom", "error"):
            rec.note = _join(f"batch: {why}", rec.note, f"next: batch {nxt}" if nxt else "")
        yield models.checked(rec, tokens)
        if not nxt:
            return
        batch, why = nxt, f"stepped down from {batch} (out of memory)"


def _measure(plan: Plan, cell: Cell, machine: Machine, blockers: Blockers, models: _Models, emit,
             tokens) -> Record:
    chunk = plan.chunk_for(cell)
    ceil = machine.ceilings
    rec = Record(arch=cell.arch, model=cell.model, size=cell.size, params=None, ctx=cell.ctx,
                 batch=cell.batch, batch_cap=plan.batch_cap if plan.throughput else None,
                 matmul_tflops=ceil.matmul_tflops if ceil else None,
                 copy_tbs=ceil.copy_tbs if ceil else None, read_tbs=(ceil.read_tbs or None) if ceil else None,
                 mode=plan.mode, gen_tokens=plan.gen_tokens, timed_steps=plan.steps,
                 timed_prefills=plan.timed_prefills, chunk_size=chunk,
                 device=machine.name, gpus=plan.tp, parallel=plan.parallel, dtype=plan.dtype_name,
                 torch=machine.torch, triton=machine.triton)
    analytic = _analyse(rec, plan.config_for(cell), plan, chunk)
    model_note = plan.note_for(cell)
    skip = _skip_note(cell, analytic and analytic["est_bytes"], machine, blockers, tokens)
    if skip:
        rec.status, rec.note = "skipped", _join(skip, model_note)
        return rec
    runner = models.runner_for(cell, emit)
    if runner is None:
        rec.status, rec.note = models.failure[0], _join(models.failure[1], model_note)
        return rec
    if runner.config is not None:            # what was built: a loaded folder's own config
        analytic = _analyse(rec, runner.config, plan, chunk)
    rec.params = runner.params
    if plan.timed_prefills:
        res = _one_at_a_time(plan, runner, cell, chunk)
    else:
        res = _agreed(run_cell(runner, cell.ctx, cell.batch, plan.gen_tokens, chunk or None, plan.repeats,
                               plan.seed, plan.decode_only, steps=plan.steps, cold_after=plan.cold_after), runner)
    rec.status, rec.note = res.status, _join(res.note, model_note)
    if res.lost:
        models.lost = res.note
    if res.status == "oom":                  # a batch-1 prefill's out-of-memory blocks every batch here
        blockers.add(cell.model, cell.ctx, 1 if res.one_sequence else cell.batch)
    if res.status == "ok":
        _add_measured(rec, res, analytic, _read_ceiling_for(rec, res, analytic, machine))
        if plan.throughput:
            _add_throughput(rec, res, runner.config or plan.config_for(cell), plan)
    return rec


def _one_at_a_time(plan: Plan, runner: Runner, cell: Cell, chunk: int) -> CellResult:
    """A throughput cell of ``plan.timed_prefills`` (module docstring): the decode half at the
    cell's batch from a random cache, then the prefill half, ``N`` batch-1 prefills timed; each
    half a ``run_cell`` of its own (out-of-memory a result, the memory released after it), its
    status agreed over the tensor-parallel group before the next is run."""
    batch = cell.batch
    decode = _agreed(run_cell(runner, cell.ctx, batch, plan.gen_tokens, None, seed=plan.seed, decode_only=True,
                              steps=plan.steps), runner)
    if decode.status != "ok":
        return decode
    runner.end_cell()                 # the batch's cache is not held while one sequence is prefilled
    n = min(plan.timed_prefills, batch)           # the batch has no more sequences to prefill
    one = _agreed(run_cell(runner, cell.ctx, 1, plan.gen_tokens, chunk or None, seed=plan.seed, steps=0,
                           prefills=n, cold_after=plan.cold_after), runner)
    if one.status != "ok":
        one.note, one.one_sequence = f"{ONE_SEQUENCE} {one.note}", True
        return one
    peaks = [(r.peak_alloc, r.peak_reserved) for r in (decode, one) if r.peak_alloc is not None]
    timed = 1 if one.cold else n                  # timed cold: the warm-up's prefill alone
    note = _join(f"prefill: {timed} of {batch} sequences prefilled one at a time and timed, the batch's prefill time "
                 f"{batch} x their median; the batch decoded from a cache of random values (as --decode-only)",
                 "peak memory: the larger phase's (the decode holds the batch's cache, the prefill one "
                 "sequence's activations)" if peaks else "", one.note if one.cold else "")
    return dataclasses.replace(decode, prefill_s=batch * one.prefill_s, note=note, cold=one.cold,
                               warmup_prefill_s=one.warmup_prefill_s,
                               peak_alloc=max((a for a, _ in peaks), default=None),
                               peak_reserved=max((r for _, r in peaks), default=None))


STATUSES = ("ok", "oom", "error")          # better to worse: the group's status of a cell is the worst


def _agreed(res: CellResult, runner: Runner) -> CellResult:
    """A cell's result as the tensor-parallel ``group`` agrees on it (a maximum all-reduced over
    it): this rank's, or, where another rank's was worse, that status with a note saying so. One
    process, and a result that lost the CUDA context (nothing more runs), keep their own."""
    if runner.group is None or res.lost:
        return res
    from ..parallel.tensor import max_over

    worst = STATUSES[max_over(runner.group, STATUSES.index(res.status), runner.device)]
    if worst == res.status:
        return res
    what = "ran out of memory" if worst == "oom" else "failed"
    return CellResult(status=worst, note=f"another rank of the tensor-parallel group {what}")


def _analyse(rec: Record, cfg: ModelConfig | None, plan: Plan, chunk: int) -> dict | None:
    """The cost model of ``cfg`` for the record's cell (None without a config), its parameter
    count, memory estimate and decode bytes written into ``rec``."""
    if cfg is None:
        return None
    analytic = cell_analytics(cfg, rec.ctx, rec.batch, element_size(plan.dtype),
                              1 if plan.decode_only else chunk, plan.reserve, plan.tp, bool(plan.timed_prefills),
                              fp8=plan.fp8)
    rec.params, rec.est_gb = cfg.n_params(), analytic["est_bytes"] / GB
    rec.decode_gb_per_token = analytic["decode_bytes"] / GB
    return analytic


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _skip_note(cell: Cell, est: float | None, machine: Machine, blockers: Blockers, tokens) -> str:
    """Why ``cell`` is not run (empty: it is)."""
    if machine.memory is not None and est is not None and est > machine.memory:
        return f"estimate {est / GB:.3g} GB exceeds {machine.memory_words()}"
    blocker = blockers.blocker(cell)
    if blocker is not None:
        return f"ctx {tokens(blocker[0])} batch {blocker[1]} already ran out of memory"
    return ""


def _gb(n: int | None) -> float | None:
    return None if n is None else n / GB


def _read_ceiling_for(rec: Record, res: CellResult, analytic: dict | None, machine: Machine) -> Ceilings | None:
    """The ceilings a measured cell's shares are taken over. The read ceiling is the most this run
    saw the device read: the read kernels' fastest (``hardware.measure_ceilings``), or a decode step's
    that read faster. A step's kernels can: YOCO-3B at batch 32 and 256K reads 35 GB per cross-decoder
    layer, which amortises a read's start and tail further than the kernels' 16 GiB (H200, 2026-12-03:
    4.54 TB/s against their 4.45). Such a step raises the run's read ceiling, for its own row (share
    1, its note says so) and every row after it (``read_tbs``), so that no share exceeds 1."""
    ceil = machine.ceilings
    if not (ceil and ceil.read_tbs > 0 and analytic and res.decode_ms):
        return ceil
    read = analytic["decode_bytes"] / (res.decode_ms / 1e3) / 1e12
    if read <= ceil.read_tbs:
        return ceil
    rec.note = _join(rec.note, f"read ceiling raised from {ceil.read_tbs:.4g} to {read:.4g} TB/s: this decode step "
                               "read faster than the read kernels")
    machine.ceilings = dataclasses.replace(ceil, read_tbs=read)
    rec.read_tbs = read
    return machine.ceilings


def _add_measured(rec: Record, res: CellResult, analytic: dict | None, ceil: Ceilings | None) -> None:
    rec.prefill_s, rec.warmup_prefill_s, rec.decode_ms = res.prefill_s, res.warmup_prefill_s, res.decode_ms
    rec.decode_tok_s = rec.batch * 1e3 / res.decode_ms if res.decode_ms else None
    rec.peak_alloc_gb, rec.peak_reserved_gb = _gb(res.peak_alloc), _gb(res.peak_reserved)
    rec.cache_gb = _gb(res.cache_bytes)
    sh = shares(analytic, res, ceil)
    rec.prefill_tflops, rec.prefill_share, rec.decode_share = sh["prefill_tflops"], sh["prefill_share"], sh["decode_share"]


def _add_throughput(rec: Record, res: CellResult, cfg: ModelConfig, plan: Plan) -> None:
    """decode_s (the ``gen_tokens`` steps: measured, or extrapolated from the ``timed_steps``
    measured, which the note then says) and throughput_tok_s = batch x gen_tokens / (prefill +
    decode)."""
    if res.prefill_s is None or res.decode_s is None:
        return
    total, timed = plan.gen_tokens, plan.steps
    rec.decode_s = res.decode_s
    if timed < total:
        elem = element_size(plan.dtype)
        scale = (decode_bytes_over(cfg, rec.ctx, rec.batch, elem, total, plan.tp, fp8=plan.fp8)
                 / decode_bytes_over(cfg, rec.ctx, rec.batch, elem, timed, plan.tp, fp8=plan.fp8))
        rec.decode_s = res.decode_s * scale
        rec.note = _join(rec.note, f"decode: {timed} of {total} steps timed, the time of all {total} extrapolated "
                                   f"by the analytic bytes per step (x{scale:.4g})")
    rec.throughput_tok_s = rec.batch * total / (res.prefill_s + rec.decode_s)
