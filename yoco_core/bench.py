"""Measurement logic of ``yoco profile``: the analytic cost model, the hardware ceilings, timing one
(arch, size, context, batch) cell, and the two peers (HF Llama, fla's YOCO).

Analytic model (pure functions of a ``ModelConfig``; ``b`` = bytes per element of the model dtype,
``B`` = batch, ``T`` = context tokens, ``d`` = dim, ``f`` = FFN width, ``V`` = vocabulary,
``kv`` = ``n_kv_heads * head_dim``, ``L`` = layers, ``L/2`` = self- and cross-decoder depth):

* **Prefill FLOPs** (multiply-add = 2 FLOPs), split in four parts (``prefill_flops``):

  - ``linear``: every weight matrix a token goes through, ``2 * B * T * P_token``, where
    ``P_token`` is the linear weights run per prompt token: for the Transformer every layer
    (``2 d^2 + 2 d kv + 3 d f`` each); for YOCO the self-decoder layers and the global K/V
    projections, plus ``2 * B * P_cross`` for the cross-decoder, which runs for the last position
    only (early exit). Embedding lookups are not FLOPs; norms and activations are left out.
  - ``lm_head``: ``2 * B * d * V``, the last position only.
  - ``attention``: softmax attention, ``4 * d * B * K`` with ``K`` the (query, key) pairs a layer
    scores (``QK^T`` and ``AV``, ``d`` = heads x head dim). Causal over ``T``:
    ``K = T (T + 1) / 2`` per layer (about ``2 T^2 d`` FLOPs per layer and sequence); a sliding
    window ``w``: ``K = sum_p min(p + 1, w)``; YOCO's cross-decoder at the last position: ``K = T``.
  - ``mixer``: gated retention in its chunkwise form (chunks of ``C = 64``, the size fla-core's
    kernel and our PyTorch form use), per self-decoder layer ``4 B T' C d + 4 B T' d h``
    (intra-chunk scores and their product with V, then the state read and update; ``h`` = head
    dim, ``T'`` = T rounded up to a multiple of C), plus ``2 B P d h`` for the state carry between
    chunks done as a matmul (``P`` = pairs of chunks within blocks of 256 chunks; negligible).

* **Decode bytes per step** (``decode_bytes``): what one step must read from memory: every weight
  once (all parameters but the embedding table, of which only ``B`` rows are read) plus the cache:
  for YOCO the global KV once per cross-decoder layer, ``L/2 * 2 B T kv b``, plus each self-decoder
  layer's state (gRet: ``B H h^2`` float32; SWA: its last ``w - 1`` keys and values); for the
  Transformer every layer's KV, ``L * 2 B T kv b``.

* **Memory** (``estimate_memory``): weights ``P b`` + the cache as allocated for ``T + reserve``
  tokens (``cache_bytes``, equal to ``cache.nbytes()`` of our models) + the activation peak of one
  prefill chunk of ``c`` tokens (``activation_bytes``): ``B c (3 f + 3 d) b`` (SwiGLU's gate, up
  and product, the residual stream and the normed input) + for gRet the chunkwise form's float32
  chunk states and score blocks ``2 B ceil(c / 64) H_s (64^2 + h^2) 4`` + the last position's
  logits ``2 B V 4``. An estimate, good to tens of percent, used to mark cells that cannot fit.

Timing (``measure_cell``): random token ids; a warm-up (the same prefill and a few decode steps,
so that compilation, Triton autotuning and cuDNN's per-length attention builds fall outside the
timing: a 4K warm-up left them inside the Transformer's timed 128K prefill); prefill
timed with CUDA events (``perf_counter`` on the CPU) around the whole prefill, the median of at
least ``repeats`` runs, and of up to ``MAX_PREFILL_REPEATS`` while their total stays under
``PREFILL_BUDGET_S`` (a single 4K prefill after the warm-up measured 2-3x its steady time, so short
cells are repeated; a long one is timed once); then ``gen_tokens``
greedy decode steps, each timed on its own, the median reported. Peak memory
(``torch.cuda.max_memory_allocated/reserved``) is reset before the prefill, so it covers prefill
and decode. ``run_cell`` turns an out-of-memory error into a result (status ``oom``), releases the
memory, and returns; any other error becomes status ``error`` with its first line.

Fault injection for tests: ``YOCO_PROFILE_INJECT_OOM="arch:ctx:batch[,arch:ctx:batch...]"`` makes
those cells raise ``torch.OutOfMemoryError`` right after their prefill (cache allocated), so the
whole OOM path, clean-up included, runs without needing the memory to run out.
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ModelConfig, get_config
from .graphs import make_decoder
from .kernels.gret.chunk import CARRY_BLOCK, CHUNK
from .model import build_model

DEFAULT_YOCO_CHUNK = 8192            # prefill chunk of ``--chunk-size auto`` for our yoco (see default_chunk)
WARMUP_TOKENS = 4096                 # warm-up cache length for decode-only cells
WARMUP_STEPS = 3                     # warm-up decode steps
PREFILL_BUDGET_S = 1.0               # short prefills are timed again while their total stays under this
MAX_PREFILL_REPEATS = 5              # ... up to this many times (the median is reported)
INJECT_ENV = "YOCO_PROFILE_INJECT_OOM"

OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)

ARCHS = ("yoco", "transformer", "hf", "fla")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class PeerUnavailable(Exception):
    """A peer arch whose package (or device) is missing; the message is one line."""


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


# -- analytic model --------------------------------------------------------------------------
def _kv_dim(cfg: ModelConfig) -> int:
    return cfg.n_kv_heads * cfg.head_dim


def linear_params(cfg: ModelConfig) -> dict[str, int]:
    """Linear weights by how often prefill runs them: ``token`` (every prompt token), ``last``
    (YOCO's cross-decoder: the last position only), ``head`` (lm_head, the last position)."""
    d, f, kv = cfg.dim, cfg.ffn_dim, _kv_dim(cfg)
    ffn = 3 * d * f
    if cfg.arch == "transformer":
        return {"token": cfg.n_layers * (2 * d * d + 2 * d * kv + ffn), "last": 0, "head": d * cfg.vocab_size}
    half = cfg.n_layers // 2
    mixer = 5 * d * d + d * cfg.n_self_heads if cfg.self_decoder == "gret" else 4 * d * d
    return {"token": half * (mixer + ffn) + 2 * d * kv, "last": half * (2 * d * d + ffn),
            "head": d * cfg.vocab_size}


def _causal_pairs(T: int) -> int:
    return T * (T + 1) // 2


def _window_pairs(T: int, w: int) -> int:
    """(query, key) pairs of causal attention limited to the last ``w`` keys: sum_p min(p+1, w)."""
    if T <= w:
        return _causal_pairs(T)
    return _causal_pairs(w) + (T - w) * w


def prefill_flops(cfg: ModelConfig, ctx: int, batch: int = 1) -> dict[str, float]:
    """FLOPs of one prefill of ``ctx`` tokens (parts and ``total``; see the module docstring)."""
    B, T, d = batch, ctx, cfg.dim
    p = linear_params(cfg)
    out = {"linear": 2.0 * B * (T * p["token"] + p["last"]), "lm_head": 2.0 * B * p["head"],
           "attention": 0.0, "mixer": 0.0}
    if cfg.arch == "transformer":
        out["attention"] = 4.0 * d * B * cfg.n_layers * _causal_pairs(T)
    else:
        half = cfg.n_layers // 2
        out["attention"] = 4.0 * d * B * half * T                  # cross-decoder, last position
        if cfg.self_decoder == "swa":
            out["attention"] += 4.0 * d * B * half * _window_pairs(T, cfg.window)
        else:
            C = min(CHUNK, T)
            Tp = -(-T // C) * C
            N, blk = Tp // C, CARRY_BLOCK
            carry = sum(min(blk, N - s) ** 2 for s in range(0, N, blk))    # chunk pairs of the state carry
            out["mixer"] = half * (4.0 * B * Tp * C * d + 4.0 * B * Tp * d * cfg.self_head_dim
                                   + 2.0 * B * carry * d * cfg.self_head_dim)
    out["total"] = sum(out.values())
    return out


def state_bytes(cfg: ModelConfig, ctx: int, batch: int, elem: int) -> int:
    """Bytes of the self-decoder states after ``ctx`` tokens (0 for the Transformer)."""
    if cfg.arch == "transformer":
        return 0
    half = cfg.n_layers // 2
    if cfg.self_decoder == "gret":
        return half * batch * cfg.n_self_heads * cfg.self_head_dim ** 2 * 4   # float32 state
    keep = min(ctx, cfg.window - 1)
    return half * 2 * batch * keep * cfg.dim * elem


def cache_bytes(cfg: ModelConfig, ctx: int, batch: int, elem: int, reserve: int = 0) -> dict[str, int]:
    """The cache of our models after a prefill of ``ctx`` tokens with room for ``reserve`` more:
    ``kv`` (= ``cache.kv_nbytes()``) and ``state`` (= ``cache.state_nbytes()``)."""
    cap = max(1, ctx + reserve)
    one = 2 * batch * cap * _kv_dim(cfg) * elem
    kv = one if cfg.arch == "yoco" else cfg.n_layers * one
    return {"kv": kv, "state": state_bytes(cfg, ctx, batch, elem)}


def weight_bytes_read(cfg: ModelConfig, elem: int) -> int:
    """Weights one decode step reads: every parameter but the (untied) embedding table."""
    emb = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    return (cfg.n_params() - emb) * elem


def decode_bytes(cfg: ModelConfig, ctx: int, batch: int, elem: int) -> dict[str, int]:
    """Bytes one decode step at context ``ctx`` must read: ``weights``, ``cache``, ``total``."""
    kv_layer = 2 * batch * ctx * _kv_dim(cfg) * elem
    layers = cfg.n_layers // 2 if cfg.arch == "yoco" else cfg.n_layers
    out = {"weights": weight_bytes_read(cfg, elem),
           "cache": layers * kv_layer + state_bytes(cfg, ctx, batch, elem)}
    out["total"] = out["weights"] + out["cache"]
    return out


def activation_bytes(cfg: ModelConfig, chunk: int, batch: int, elem: int) -> int:
    """Activation peak of one prefill chunk of ``chunk`` tokens (see the module docstring)."""
    B, c = batch, chunk
    act = B * c * (3 * cfg.ffn_dim + 3 * cfg.dim) * elem + 2 * B * cfg.vocab_size * 4
    if cfg.arch == "yoco" and cfg.self_decoder == "gret":
        n_chunks = -(-c // CHUNK)
        act += 2 * B * n_chunks * cfg.n_self_heads * (CHUNK ** 2 + cfg.self_head_dim ** 2) * 4
    return act


def estimate_memory(cfg: ModelConfig, ctx: int, batch: int, elem: int, chunk: int | None = None,
                    reserve: int = 0) -> dict[str, int]:
    """Memory a cell needs: ``weights`` + ``cache`` + ``activations`` = ``total`` (bytes)."""
    c = effective_chunk(chunk, ctx) or ctx
    cache = cache_bytes(cfg, ctx, batch, elem, reserve)
    out = {"weights": cfg.n_params() * elem, "cache": cache["kv"] + cache["state"],
           "activations": activation_bytes(cfg, c, batch, elem)}
    out["total"] = sum(out.values())
    return out


# -- devices, clocks, ceilings ---------------------------------------------------------------
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
    matmul_tflops: float          # measured dense matmul rate in the run's dtype
    copy_tbs: float               # measured device copy bandwidth, bytes read + written, TB/s
    matmul_n: int = 0


def _median_seconds(clock: Clock, fn, reps: int, warm: int) -> float:
    for _ in range(warm):
        fn()
    clock.sync()
    times = []
    for _ in range(reps):
        a = clock.mark()
        fn()
        b = clock.mark()
        times.append(clock.seconds(a, b))
    return statistics.median(times)


def _matmul_seconds(clock: Clock, n: int, dtype, gen, reps: int) -> float:
    a = torch.randn(n, n, device=clock.device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=clock.device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=clock.device, dtype=dtype)
    return _median_seconds(clock, lambda: torch.mm(a, b, out=out), reps, warm=3 if clock.cuda else 1)


def _copy_seconds(clock: Clock, numel: int, gen, reps: int) -> float:
    src = torch.rand(numel, device=clock.device, dtype=torch.float32, generator=gen)
    dst = torch.empty_like(src)
    return _median_seconds(clock, lambda: dst.copy_(src), reps, warm=2 if clock.cuda else 1)


@torch.inference_mode()
def measure_ceilings(device, dtype: torch.dtype, matmul_n: int | None = None,
                     copy_bytes: int | None = None, reps: int | None = None) -> Ceilings:
    """The matmul rate (``n^3`` products of random normal matrices, median of ``reps``) and the
    device-to-device copy bandwidth (counting the bytes read and the bytes written).

    Defaults: on CUDA ``n = 8192`` and 1 GiB copied; on the CPU ``n = 1024`` and 64 MiB."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = matmul_n or (8192 if cuda else 1024)
    nbytes = copy_bytes or ((1 << 30) if cuda else (64 << 20))
    reps = reps or (10 if cuda else 3)
    clock = Clock(device)
    gen = torch.Generator(device=device).manual_seed(1234)
    tflops = 2.0 * n ** 3 / _matmul_seconds(clock, n, dtype, gen, reps) / 1e12
    numel = nbytes // 4
    tbs = 2.0 * numel * 4 / _copy_seconds(clock, numel, gen, reps) / 1e12
    release(device)
    return Ceilings(matmul_tflops=tflops, copy_tbs=tbs, matmul_n=n)


# -- runners: one interface for our models and the peers ------------------------------------
def tensor_nbytes(obj, _seen: set | None = None, _depth: int = 0) -> int:
    """Bytes of the distinct tensor storages reachable from a cache object (lists, tuples,
    dicts and plain objects' attributes, a few levels deep): the cache size of a peer."""
    seen = set() if _seen is None else _seen
    if _depth > 8 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        key = ("storage", st.data_ptr(), obj.device)
        if key in seen:
            return 0
        seen.add(key)
        return st.nbytes()
    if isinstance(obj, torch.nn.Module) or isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return 0
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    else:
        return 0
    return sum(tensor_nbytes(x, seen, _depth + 1) for x in items)


@dataclass
class Runner:
    """A model ready to be profiled: ``prefill(ids, chunk) -> (logits [B, V], cache)``,
    ``decode(ids [B, 1], cache) -> (logits [B, V], cache)``, ``cache_nbytes(cache)``.
    ``config`` is the same-shaped ``ModelConfig`` the analytic model uses."""
    arch: str
    config: ModelConfig
    model: Any
    device: torch.device
    params: int
    extra: dict = field(default_factory=dict)

    def prefill(self, ids, chunk_size: int | None, reserve: int):
        raise NotImplementedError

    def decode(self, ids, cache):
        raise NotImplementedError

    def cache_nbytes(self, cache) -> int:
        return tensor_nbytes(cache)

    def prepare_decode(self, cache) -> None:
        """Anything to set up for decoding ``cache`` before the timed steps (ours: the CUDA graph)."""

    def random_cache(self, batch: int, ctx: int, reserve: int, seed: int = 0):
        """A cache of ``ctx`` positions filled with random values, without a prefill (for
        ``decode_only`` cells); only our models have one."""
        raise NotImplementedError(f"{self.arch}: decode-only cells need one of our models (yoco, transformer)")

    def end_cell(self) -> None:
        """Drop what the cell's decoding still holds (ours: its cache and the graph's memory)."""

    def close(self) -> None:
        self.end_cell()
        self.model = None
        release(self.device)


class NativeRunner(Runner):
    """Our models; decoding goes through ``make_decoder`` (a CUDA graph on the GPU), built (and
    captured) for each cache before its timed decode steps."""

    _decoder = None

    def prefill(self, ids, chunk_size, reserve):
        self._decoder = None
        return self.model.prefill(ids, chunk_size=chunk_size, reserve=reserve)

    def prepare_decode(self, cache) -> None:
        """Build (and on CUDA capture) the decoder for ``cache`` outside the timed steps."""
        self._decoder = make_decoder(self.model, cache)

    def random_cache(self, batch, ctx, reserve, seed=0):
        self._decoder = None
        return random_cache(self.model, batch, ctx, reserve, seed)

    def decode(self, ids, cache):
        if self._decoder is None or self._decoder.cache is not cache:
            self.prepare_decode(cache)
        return self._decoder(ids)[:, -1], cache

    def end_cell(self) -> None:
        self._decoder = None


    def cache_nbytes(self, cache) -> int:
        return cache.nbytes()


class HFRunner(Runner):
    """HF-style models (``transformers`` Llama, fla's YOCO): forward with a cache object."""

    def _call(self, ids, cache, **kw):
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
        return out.logits[:, -1], out.past_key_values

    @torch.inference_mode()
    def prefill(self, ids, chunk_size, reserve):
        T = ids.shape[1]
        step = effective_chunk(chunk_size, T) or T
        cache = logits = None
        for s in range(0, T, step):
            logits, cache = self._call(ids[:, s: s + step], cache, logits_to_keep=1,
                                       **self.extra.get("prefill_kwargs", {}))
        return logits, cache

    @torch.inference_mode()
    def decode(self, ids, cache):
        return self._call(ids, cache)


def random_cache(model, batch: int, ctx: int, reserve: int, seed: int = 0):
    """The cache a prefill of ``ctx`` tokens would leave (same buffers, same capacity ``ctx +
    reserve``, same fill length), holding standard-normal keys, values and states instead. A decode
    step reads and computes the same whatever the values, so decode latency and throughput can be
    measured at large batches without paying for their prefills."""
    cache = model.new_cache(batch, ctx + reserve)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    cfg = model.config
    buffers = cache.layers if cfg.arch == "transformer" else [cache.kv]
    for buf in buffers:
        for t in (buf.k, buf.v):
            t[:, :, :ctx].normal_(generator=gen)
        buf.length = ctx
    if cfg.arch == "yoco":
        H, h = cfg.n_self_heads, cfg.self_head_dim
        for i in range(len(cache.states)):
            if cfg.self_decoder == "gret":
                cache.states[i] = torch.randn(batch, H, h, h, device=model.device, dtype=torch.float32,
                                              generator=gen)
            else:
                keep = min(ctx, cfg.window - 1)
                cache.states[i] = tuple(torch.randn(batch, H, keep, h, device=model.device, dtype=model.dtype,
                                                    generator=gen) for _ in range(2))
    return cache


def size_config(arch: str, size: str, self_decoder: str = "gret") -> ModelConfig:
    """The preset a (arch, size) cell runs; the peers use their same-shaped twin
    (hf: ``transformer-<size>``, fla: ``yoco-<size>`` with gRet)."""
    if arch in ("transformer", "hf"):
        return get_config(f"transformer-{size}")
    if arch == "fla" or self_decoder == "gret":
        return get_config(f"yoco-{size}")
    return get_config(f"yoco-swa-{size}")


def model_name(arch: str, size: str, self_decoder: str = "gret") -> str:
    """The ``model`` column: the preset name, or the peer's name (``hf-llama-3b``, ``fla-yoco-3b``)."""
    if arch == "hf":
        return f"hf-llama-{size}"
    if arch == "fla":
        return f"fla-yoco-{size}"
    return size_config(arch, size, self_decoder).name


def check_peer(arch: str, device=None) -> None:
    """Raise ``PeerUnavailable`` (one line) when a peer arch cannot run here."""
    if arch == "hf":
        try:
            import transformers  # noqa: F401
            from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401
        except Exception:
            raise PeerUnavailable("arch hf needs transformers (pip install 'yoco[hf]' or pip install transformers)") from None
    elif arch == "fla":
        try:
            import fla  # noqa: F401
        except Exception:
            raise PeerUnavailable("arch fla needs flash-linear-attention (pip install flash-linear-attention)") from None
        try:
            from fla.models.yoco import YOCOConfig, YOCOForCausalLM  # noqa: F401
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PeerUnavailable("arch fla needs a flash-linear-attention with fla.models.yoco "
                                  f"(import failed: {first})") from None
        if device is not None and torch.device(device).type != "cuda":
            raise PeerUnavailable("arch fla runs Triton kernels and needs --device cuda")


def _hf_from_config(cls, cfg, device, dtype):
    with torch.device(device):
        try:
            model = cls._from_config(cfg, dtype=dtype)            # transformers >= 4.56
        except TypeError:
            model = cls._from_config(cfg, torch_dtype=dtype)      # older releases
    return model.to(device=device, dtype=dtype).eval()


def _count_params(model) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def build_runner(arch: str, size: str, device, dtype: torch.dtype, max_tokens: int,
                 self_decoder: str = "gret", seed: int = 0) -> Runner:
    """Build the model of one (arch, size) on ``device`` in ``dtype`` with random weights (a fixed
    seed) and room for ``max_tokens`` positions (context + decoded tokens)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}")
    device = torch.device(device)
    cfg = size_config(arch, size, self_decoder)
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, max_tokens))
    if arch in ("yoco", "transformer"):
        # weights made in the target dtype (not float32 first): a 13B model then fits an 80 GB GPU
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = build_model(cfg, device=device, dtype=dtype, seed=seed)
        finally:
            torch.set_default_dtype(previous)
        return NativeRunner(arch=arch, config=cfg, model=model, device=device, params=cfg.n_params())
    check_peer(arch, device)
    torch.manual_seed(seed)
    if arch == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM

        fields = getattr(LlamaConfig, "__dataclass_fields__", None) or {}
        rope = ({"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}}
                if "rope_parameters" in fields else {"rope_theta": cfg.rope_theta})
        hf_cfg = LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=max_tokens,
            rms_norm_eps=cfg.norm_eps, tie_word_embeddings=False, **rope)
        hf_cfg._attn_implementation = "sdpa"
        model = _hf_from_config(LlamaForCausalLM, hf_cfg, device, dtype)
        impl = getattr(model.config, "_attn_implementation", None)
        if impl != "sdpa":
            raise RuntimeError(f"transformers chose attention {impl!r} for Llama, not sdpa")
        return HFRunner(arch=arch, config=cfg, model=model, device=device, params=_count_params(model))
    from fla.models.yoco import YOCOConfig, YOCOForCausalLM

    half = cfg.n_layers // 2
    fla_cfg = YOCOConfig(
        hidden_size=cfg.dim, num_self_decoder_layers=half, num_hidden_layers=cfg.n_layers,
        self_decoder_attn={"type": "gated_retention", "num_heads": cfg.n_self_heads,
                           "rope_theta": cfg.rope_theta,
                           "gate_logit_normalizer": cfg.gate_logit_normalizer},
        cross_decoder_attn={"num_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads,
                            "rope_theta": cfg.rope_theta},
        intermediate_size=cfg.ffn_dim, vocab_size=cfg.vocab_size, norm_eps=cfg.norm_eps,
        max_position_embeddings=max_tokens, tie_word_embeddings=False, fuse_cross_entropy=False)
    model = _hf_from_config(YOCOForCausalLM, fla_cfg, device, dtype)
    return HFRunner(arch=arch, config=cfg, model=model, device=device, params=_count_params(model),
                    extra={"prefill_kwargs": {"skip_cross_decoder": True}})


# -- one cell --------------------------------------------------------------------------------
def default_chunk(arch: str) -> int | None:
    """The prefill chunk of ``--chunk-size auto``: 8K tokens for our YOCO (YOCO-3B at 1M on an H100:
    12.48 GB peak and 6.01 s with 8K chunks, 12.55 GB and 5.93 s with 16K; its prefill memory is
    then bounded); unchunked for the Transformers (as users run them) and for fla's YOCO, whose
    cache takes only one new token per call after the first (measured: a second prefill chunk
    fails with "only support q_len == 1 for decoding" in flash-linear-attention 0.6.0)."""
    return DEFAULT_YOCO_CHUNK if arch == "yoco" else None


def effective_chunk(chunk_size: int | None, ctx: int) -> int:
    """The chunk prefill uses for ``ctx`` tokens; 0 = unchunked (one piece)."""
    return int(chunk_size) if chunk_size and chunk_size < ctx else 0


def _inject_oom(arch: str, ctx: int, batch: int) -> None:
    spec = os.environ.get(INJECT_ENV, "")
    cells = {c.strip() for c in spec.split(",") if c.strip()}
    if f"{arch}:{ctx}:{batch}" in cells:
        raise OOM_ERRORS[0](f"injected out-of-memory ({INJECT_ENV}) at {arch} ctx {ctx} batch {batch}")


@dataclass
class CellResult:
    status: str                       # ok, oom or error
    prefill_s: float | None = None
    decode_ms: float | None = None
    peak_alloc: int | None = None
    peak_reserved: int | None = None
    cache_bytes: int | None = None
    note: str = ""


def decode_reserve(gen_tokens: int) -> int:
    """Cache positions reserved beyond the context: the timed steps, the warm-up steps, one spare.
    The memory estimate and the cache a cell allocates both use it."""
    return gen_tokens + WARMUP_STEPS + 1


def _cell_generator(dev, seed: int, ctx: int, batch: int) -> torch.Generator:
    """The random token ids of one cell: the same for every arch, different per cell."""
    return torch.Generator(device=dev).manual_seed(seed * 1_000_003 + ctx * 131 + batch)


def measure_cell(runner: Runner, ctx: int, batch: int, gen_tokens: int, chunk_size: int | None,
                 repeats: int = 1, seed: int = 0, decode_only: bool = False) -> CellResult:
    """Time one cell (raises on out-of-memory; ``run_cell`` catches). See the module docstring.
    ``decode_only``: no prefill; decoding starts from ``runner.random_cache`` (prefill_s is None)."""
    if decode_only:
        return _measure_decode_only(runner, ctx, batch, gen_tokens, seed)
    dev = runner.device
    clock = Clock(dev)
    reserve = decode_reserve(gen_tokens)
    chunk = effective_chunk(chunk_size, ctx) or None
    ids = torch.randint(0, runner.config.vocab_size, (batch, ctx), device=dev, generator=_cell_generator(dev, seed, ctx, batch))

    with torch.inference_mode():
        # warm-up: a whole prefill and a few decode steps at this batch. The whole length, because
        # kernels are built per length: cuDNN's attention per sequence length (a 4K warm-up left
        # its build inside the Transformer's timed 128K prefill), fla's Triton kernels per length
        # (4-7 s of compilation at 8K-16K), the last position's attention over the whole cache
        logits, cache = runner.prefill(ids, chunk, WARMUP_STEPS + 1)
        for _ in range(WARMUP_STEPS):
            logits, cache = runner.decode(logits.argmax(-1, keepdim=True), cache)
        logits = cache = None
        runner.end_cell()             # the warm-up's decoder (graph, cache) must not outlive it
        reset_memory(dev)

        prefill_times = []
        while True:
            logits = cache = None          # free the previous cache before the next prefill
            a = clock.mark()
            logits, cache = runner.prefill(ids, chunk, reserve)
            b = clock.mark()
            prefill_times.append(clock.seconds(a, b))
            n = len(prefill_times)
            if n >= max(1, repeats) and (n >= MAX_PREFILL_REPEATS or sum(prefill_times) >= PREFILL_BUDGET_S):
                break
        res = _timed_decode(runner, clock, logits.argmax(-1, keepdim=True), cache, ctx, batch, gen_tokens)
    res.prefill_s = statistics.median(prefill_times)
    return res


def _timed_decode(runner: Runner, clock: Clock, tok, cache, ctx: int, batch: int, gen_tokens: int) -> CellResult:
    """The part every cell shares once its cache is filled: the injected OOM (tests), the cache
    bytes, the decoder set-up, ``gen_tokens`` individually timed greedy steps, the memory peaks."""
    _inject_oom(runner.arch, ctx, batch)
    nbytes = runner.cache_nbytes(cache)
    runner.prepare_decode(cache)
    marks = []
    for _ in range(gen_tokens):
        a = clock.mark()
        logits, cache = runner.decode(tok, cache)
        tok = logits.argmax(-1, keepdim=True)
        b = clock.mark()
        marks.append((a, b))
    clock.sync()
    steps = [clock.seconds(a, b) for a, b in marks]
    res = CellResult(status="ok", decode_ms=statistics.median(steps) * 1e3 if steps else None, cache_bytes=nbytes)
    if clock.cuda:
        res.peak_alloc = torch.cuda.max_memory_allocated(runner.device)
        res.peak_reserved = torch.cuda.max_memory_reserved(runner.device)
    return res


def _measure_decode_only(runner: Runner, ctx: int, batch: int, gen_tokens: int, seed: int) -> CellResult:
    dev = runner.device
    clock = Clock(dev)
    tok = torch.randint(0, runner.config.vocab_size, (batch, 1), device=dev, generator=_cell_generator(dev, seed, ctx, batch))
    with torch.inference_mode():
        cache = runner.random_cache(batch, min(ctx, WARMUP_TOKENS), WARMUP_STEPS + 1, seed)   # warm-up
        for _ in range(WARMUP_STEPS):
            _, cache = runner.decode(tok, cache)
        cache = None
        runner.end_cell()
        reset_memory(dev)
        cache = runner.random_cache(batch, ctx, decode_reserve(gen_tokens), seed)
        res = _timed_decode(runner, clock, tok, cache, ctx, batch, gen_tokens)
    res.note = "decode only: cache of random values, no prefill"
    return res


def is_oom(e: BaseException) -> bool:
    if isinstance(e, OOM_ERRORS):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg.lower())


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")[:300]


def run_cell(runner: Runner, ctx: int, batch: int, gen_tokens: int, chunk_size: int | None,
             repeats: int = 1, seed: int = 0, decode_only: bool = False) -> CellResult:
    """``measure_cell`` with out-of-memory as a result: on OOM (or any other error) the cell's
    tensors are dropped with the exception, the allocator is emptied, and the status says so."""
    try:
        res = measure_cell(runner, ctx, batch, gen_tokens, chunk_size, repeats, seed, decode_only)
    except Exception as e:  # noqa: BLE001 - every failure of a cell is recorded, the sweep goes on
        res = CellResult(status="oom" if is_oom(e) else "error", note=first_line(e))
    reset_memory(runner.device)
    return res


def cell_analytics(cfg: ModelConfig, ctx: int, batch: int, elem: int, chunk: int,
                   reserve: int) -> dict[str, float]:
    """The analytic numbers of one cell: prefill FLOPs, decode bytes, memory estimate."""
    return {"flops": prefill_flops(cfg, ctx, batch)["total"],
            "decode_bytes": decode_bytes(cfg, ctx, batch, elem)["total"],
            "est_bytes": estimate_memory(cfg, ctx, batch, elem, chunk, reserve)["total"]}


def shares(analytic: dict, res: CellResult, ceil: Ceilings | None) -> dict[str, float | None]:
    """Achieved TFLOP/s and the shares of the measured ceilings (None where not measurable)."""
    out: dict[str, float | None] = {"prefill_tflops": None, "prefill_share": None, "decode_share": None}
    if res.prefill_s:
        out["prefill_tflops"] = analytic["flops"] / res.prefill_s / 1e12
        if ceil and ceil.matmul_tflops > 0:
            out["prefill_share"] = out["prefill_tflops"] / ceil.matmul_tflops
    if res.decode_ms and ceil and ceil.copy_tbs > 0:
        out["decode_share"] = analytic["decode_bytes"] / (res.decode_ms / 1e3) / (ceil.copy_tbs * 1e12)
    return out

