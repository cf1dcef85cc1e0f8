"""The cost model of ``yoco profile``: pure functions of a ``ModelConfig`` (``b`` = bytes per element
of the model dtype, ``B`` = batch, ``T`` = context tokens, ``d`` = dim, ``f`` = FFN width,
``V`` = vocabulary, ``q`` = ``n_heads * head_dim`` (``d`` unless a converted family sets its own
head size), ``kv`` = ``n_kv_heads * head_dim``, ``L`` = layers, ``L/2`` = self- and cross-decoder
depth):

* **Prefill FLOPs** (multiply-add = 2 FLOPs), split in four parts (``prefill_flops``):

  - ``linear``: every weight matrix a token goes through, ``2 * B * T * P_token``, where
    ``P_token`` is the linear weights run per prompt token: for the Transformer every layer
    (``2 d q + 2 d kv + 3 d f`` each); for YOCO the self-decoder layers and the global K/V
    projections, plus ``2 * B * P_cross`` for the cross-decoder, which runs for the last position
    only (early exit). Embedding lookups are not FLOPs; norms and activations are left out.
  - ``lm_head``: ``2 * B * d * V``, the last position only.
  - ``attention``: softmax attention, ``4 * q * B * K`` with ``K`` the (query, key) pairs a layer
    scores (``QK^T`` and ``AV``, ``q`` = heads x head dim). Causal over ``T``:
    ``K = T (T + 1) / 2`` per layer (about ``2 T^2 q`` FLOPs per layer and sequence); a sliding
    window ``w`` (SWA, and a converted family's windowed layers, ``config.window_of``):
    ``K = sum_p min(p + 1, w)``; YOCO's cross-decoder at the last position: ``K = T``.
  - ``mixer``: gated retention in its chunkwise form (chunks of ``C = 64``, the size fla-core's
    kernel and our PyTorch form use), per self-decoder layer ``4 B T' C d + 4 B T' d h``
    (intra-chunk scores and their product with V, then the state read and update; ``h`` = head
    dim, ``T'`` = T rounded up to a multiple of C), plus ``2 B P d h`` for the state carry between
    chunks done as a matmul (``P`` = pairs of chunks within blocks of 256 chunks; negligible).

* **Decode bytes per step** (``decode_bytes``): what one step must read from memory: every weight
  once (all parameters but the embedding table, of which only ``B`` rows are read) plus the cache:
  for YOCO the global KV once per cross-decoder layer, ``L/2 * 2 B T kv b``, plus each self-decoder
  layer's state (gRet: ``B H h^2`` float32; SWA: the ring slots of its last ``min(T + 1, w)``
  keys and values; the ring itself, allocated whole, holds ``w``); for the
  Transformer every layer's KV, ``L * 2 B T kv b``, of which a windowed layer reads only its last
  ``min(T, w)`` positions (the decode kernels start there).

* **Memory** (``estimate_memory``): weights ``P b`` + the cache as allocated for ``T + reserve``
  tokens (``cache_bytes``, equal to ``cache.nbytes()`` of our models; a windowed layer's buffer
  too is allocated for every position) + the activation peak of one
  prefill chunk of ``c`` tokens (``activation_bytes``): ``B c (3 f + 3 d) b`` (SwiGLU's gate, up
  and product, the residual stream and the normed input) + for gRet the chunkwise form's float32
  chunk states and score blocks ``2 B ceil(c / 64) H_s (64^2 + h^2) 4`` + the last position's
  logits ``2 B V 4``. With the batch prefilled one sequence at a time (``one_at_a_time``, the
  throughput protocol's ``--timed-prefills``) the activations are one sequence's chunk (``B = 1``)
  or the batch's decode step (``c = 1``), whichever is larger, beside the whole batch's cache.
  An estimate, good to tens of percent, used to mark cells that cannot fit
  and, by ``largest_batch``, to pick the batch of a throughput cell (the estimate grows with ``B``,
  so the largest batch within a budget is found by doubling, then bisection).

* **Tensor parallel** (``tp`` ranks, ``yoco_core.parallel.tensor``): every number is one rank's.
  The sharded weights (``sharded_params``: every layer's linear weights and the biases of the
  column-parallel ones) are divided by ``tp``, the embeddings, norms, LM head and row-parallel
  biases kept whole (``rank_params``); so are the cache (KV heads, gRet's state heads, SWA's ring),
  the FFN's hidden activations and gRet's chunk states, the linear, attention and mixer FLOPs and
  the cache a decode step reads; the residual stream, the logits and the LM head's FLOPs are whole
  on every rank.

* **fp8** (``fp8=True``: ``yoco profile --dtype fp8``, ``yoco_core.quant.quantize_fp8``): the
  projections (``linear_params``' ``token`` + ``last``: every layer's linear weights, not the LM
  head, not the embedding) take 1 byte per weight (float8 e4m3) plus one float32 scale, 4 bytes,
  per output channel (``projection_rows``); everything else (embedding, LM head, norms, biases)
  stays at ``b``, and so do the cache and the activations (``weight_bytes``). This counts the
  weights in memory and those a decode step reads. ``quantize_fp8`` pads a projection whose
  output width is not a multiple of 16 (gRet's fused ``4 d + H`` rows) with zero rows; that
  padding (under 16 rows of a layer's matrix) is left out. The FLOPs are the same: the matmul
  ceiling they are measured against is fp8's (``hardware.measure_ceilings(fp8=True)``).
"""
from __future__ import annotations

from ..config import ModelConfig
from ..kernels.gret.chunk import CARRY_BLOCK, CHUNK


def _kv_dim(cfg: ModelConfig) -> int:
    return cfg.n_kv_heads * cfg.head_dim


def _q_dim(cfg: ModelConfig) -> int:
    """Width of the queries and of the attention output (``dim`` unless ``head_size`` is set)."""
    return cfg.n_heads * cfg.head_dim


def _layer_windows(cfg: ModelConfig) -> list[int]:
    """The Transformer's window per layer (0: full causal attention)."""
    return [cfg.window_of(i) for i in range(cfg.n_layers)]


def linear_params(cfg: ModelConfig) -> dict[str, int]:
    """Linear weights by how often prefill runs them: ``token`` (every prompt token), ``last``
    (YOCO's cross-decoder: the last position only), ``head`` (lm_head, the last position)."""
    d, f, kv = cfg.dim, cfg.ffn_dim, _kv_dim(cfg)
    ffn = 3 * d * f
    if cfg.arch == "transformer":
        return {"token": cfg.n_layers * (2 * d * _q_dim(cfg) + 2 * d * kv + ffn), "last": 0,
                "head": d * cfg.vocab_size}
    half = cfg.n_layers // 2
    mixer = 5 * d * d + d * cfg.n_self_heads if cfg.self_decoder == "gret" else 4 * d * d
    return {"token": half * (mixer + ffn) + 2 * d * kv, "last": half * (2 * d * d + ffn),
            "head": d * cfg.vocab_size}


def sharded_params(cfg: ModelConfig) -> int:
    """Parameters tensor parallel splits over its ranks: every layer's linear weights, and the
    biases of the column-parallel projections (q/k/v, the FFN's gate and up)."""
    p = linear_params(cfg)
    bias = 0
    if cfg.arch == "transformer":
        bias = cfg.n_layers * ((_q_dim(cfg) + 2 * _kv_dim(cfg)) * cfg.qkv_bias + 2 * cfg.ffn_dim * cfg.mlp_bias)
    return p["token"] + p["last"] + bias


def rank_params(cfg: ModelConfig, tp: int = 1) -> int:
    """Parameters one of ``tp`` tensor-parallel ranks holds (``cfg.n_params()`` for one rank)."""
    split = sharded_params(cfg)
    return cfg.n_params() - split + split // tp


def projection_params(cfg: ModelConfig) -> int:
    """The projections' weights (``linear_params``' ``token`` + ``last``): every layer's linear
    weights, what fp8 quantizes (not the LM head, not the embedding)."""
    p = linear_params(cfg)
    return p["token"] + p["last"]


def projection_rows(cfg: ModelConfig, tp: int = 1) -> int:
    """Output channels of the projections (``projection_params``; a fused matrix's rows all
    counted, padding not), on one of ``tp`` ranks: fp8's float32 scales, one per channel. The
    column-parallel projections' rows are split over the ranks; the row-parallel ones (every
    mixer's ``o_proj`` and the FFN's ``down_proj``, ``d`` rows each) are whole on every rank."""
    d, f, kv, q = cfg.dim, cfg.ffn_dim, _kv_dim(cfg), _q_dim(cfg)
    ffn = 2 * f + d                                   # gate_up, down_proj
    if cfg.arch == "transformer":
        rows = cfg.n_layers * (q + 2 * kv + d + ffn)    # qkv, o_proj, the FFN
    else:
        half = cfg.n_layers // 2
        mixer = 5 * d + cfg.n_self_heads if cfg.self_decoder == "gret" else 4 * d   # proj | qkv, o_proj
        rows = half * (mixer + ffn) + 2 * kv + half * (2 * d + ffn)      # + kv_proj; cross: q_proj, o_proj
    whole = cfg.n_layers * 2 * d                      # o_proj and down_proj of every layer
    return (rows - whole) // tp + whole


def weight_bytes(cfg: ModelConfig, elem: int, tp: int = 1, fp8: bool = False) -> int:
    """Bytes of the weights one of ``tp`` ranks holds: every parameter at ``elem``; with ``fp8``
    the projections at 1 byte each plus 4 per output channel (module docstring)."""
    if not fp8:
        return rank_params(cfg, tp) * elem
    proj = projection_params(cfg) // tp
    return (rank_params(cfg, tp) - proj) * elem + proj + 4 * projection_rows(cfg, tp)


def _causal_pairs(T: int) -> int:
    return T * (T + 1) // 2


def _window_pairs(T: int, w: int) -> int:
    """(query, key) pairs of causal attention limited to the last ``w`` keys: sum_p min(p+1, w)
    (``w`` = 0: no limit)."""
    if not w or T <= w:
        return _causal_pairs(T)
    return _causal_pairs(w) + (T - w) * w


def prefill_flops(cfg: ModelConfig, ctx: int, batch: int = 1, tp: int = 1) -> dict[str, float]:
    """FLOPs of one prefill of ``ctx`` tokens (parts and ``total``; see the module docstring), on
    one of ``tp`` tensor-parallel ranks."""
    B, T, d = batch, ctx, cfg.dim
    p = linear_params(cfg)
    out = {"linear": 2.0 * B * (T * p["token"] + p["last"]), "lm_head": 2.0 * B * p["head"],
           "attention": 0.0, "mixer": 0.0}
    if cfg.arch == "transformer":
        out["attention"] = 4.0 * _q_dim(cfg) * B * sum(_window_pairs(T, w) for w in _layer_windows(cfg))
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
    for part in ("linear", "attention", "mixer"):        # split by heads / FFN units; the LM head is whole
        out[part] /= tp
    out["total"] = sum(out.values())
    return out


def state_bytes(cfg: ModelConfig, ctx: int, batch: int, elem: int, tp: int = 1) -> int:
    """Bytes of the self-decoder states after ``ctx`` tokens (0 for the Transformer), on one of
    ``tp`` ranks (each holds its heads' states)."""
    if cfg.arch == "transformer":
        return 0
    half = cfg.n_layers // 2
    if cfg.self_decoder == "gret":
        return half * batch * cfg.n_self_heads * cfg.self_head_dim ** 2 * 4 // tp   # float32 state
    return half * 2 * batch * cfg.window * cfg.dim * elem // tp      # SWA: the ring, allocated whole


def _state_read(cfg: ModelConfig, ctx: int, batch: int, elem: int, tp: int = 1) -> int:
    """Bytes of the self-decoder states one decode step reads: gRet its whole state, SWA the ring
    slots holding the last ``min(ctx + 1, w)`` positions."""
    if cfg.arch == "yoco" and cfg.self_decoder == "swa":
        return cfg.n_layers // 2 * 2 * batch * min(ctx + 1, cfg.window) * cfg.dim * elem // tp
    return state_bytes(cfg, ctx, batch, elem, tp)


def cache_bytes(cfg: ModelConfig, ctx: int, batch: int, elem: int, reserve: int = 0, tp: int = 1) -> dict[str, int]:
    """The cache of our models after a prefill of ``ctx`` tokens with room for ``reserve`` more:
    ``kv`` (= ``cache.kv_nbytes()``) and ``state`` (= ``cache.state_nbytes()``), of one of ``tp``
    tensor-parallel ranks."""
    cap = max(1, ctx + reserve)
    one = 2 * batch * cap * _kv_dim(cfg) * elem // tp
    kv = one if cfg.arch == "yoco" else cfg.n_layers * one
    return {"kv": kv, "state": state_bytes(cfg, ctx, batch, elem, tp)}


def weight_bytes_read(cfg: ModelConfig, elem: int, tp: int = 1, fp8: bool = False) -> int:
    """Weights one decode step reads: every parameter (of a rank's share) but the (untied)
    embedding table (``fp8``: the projections in float8, ``weight_bytes``)."""
    emb = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    return weight_bytes(cfg, elem, tp, fp8) - emb * elem


def decode_bytes(cfg: ModelConfig, ctx: int, batch: int, elem: int, tp: int = 1,
                 fp8: bool = False) -> dict[str, int]:
    """Bytes one decode step at context ``ctx`` must read (on one of ``tp`` ranks): ``weights``,
    ``cache``, ``total`` (``fp8``: the projections' weights in float8)."""
    def kv_layer(keys: int) -> int:
        return 2 * batch * keys * _kv_dim(cfg) * elem // tp

    if cfg.arch == "yoco":
        kv = cfg.n_layers // 2 * kv_layer(ctx)
    else:                                   # a windowed layer reads its last w positions only
        kv = sum(kv_layer(min(ctx, w) if w else ctx) for w in _layer_windows(cfg))
    out = {"weights": weight_bytes_read(cfg, elem, tp, fp8), "cache": kv + _state_read(cfg, ctx, batch, elem, tp)}
    out["total"] = out["weights"] + out["cache"]
    return out


def activation_bytes(cfg: ModelConfig, chunk: int, batch: int, elem: int, tp: int = 1) -> int:
    """Activation peak of one prefill chunk of ``chunk`` tokens (see the module docstring)."""
    B, c = batch, chunk
    act = B * c * (3 * cfg.ffn_dim // tp + 3 * cfg.dim) * elem + 2 * B * cfg.vocab_size * 4
    if cfg.arch == "yoco" and cfg.self_decoder == "gret":
        n_chunks = -(-c // CHUNK)
        act += 2 * B * n_chunks * cfg.n_self_heads // tp * (CHUNK ** 2 + cfg.self_head_dim ** 2) * 4
    return act


def estimate_memory(cfg: ModelConfig, ctx: int, batch: int, elem: int, chunk: int | None = None,
                    reserve: int = 0, tp: int = 1, one_at_a_time: bool = False,
                    fp8: bool = False) -> dict[str, int]:
    """Memory a cell needs (on each of ``tp`` tensor-parallel ranks): ``weights`` + ``cache`` +
    ``activations`` = ``total`` (bytes). ``one_at_a_time``: the batch's sequences are prefilled one
    by one into the batch's cache (``--timed-prefills``), so the activations are one sequence's
    prefill chunk or the batch's decode step, whichever is larger, not the whole batch's chunk.
    ``fp8``: the projections' weights in float8 (``weight_bytes``); cache and activations as without."""
    c = effective_chunk(chunk, ctx) or ctx
    cache = cache_bytes(cfg, ctx, batch, elem, reserve, tp)
    act = max(activation_bytes(cfg, c, 1, elem, tp), activation_bytes(cfg, 1, batch, elem, tp)) if one_at_a_time \
        else activation_bytes(cfg, c, batch, elem, tp)
    out = {"weights": weight_bytes(cfg, elem, tp, fp8), "cache": cache["kv"] + cache["state"], "activations": act}
    out["total"] = sum(out.values())
    return out


def largest_batch(cfg: ModelConfig, ctx: int, elem: int, memory: int, chunk: int | None = None,
                  reserve: int = 0, tp: int = 1, one_at_a_time: bool = False, fp8: bool = False) -> int:
    """The largest batch whose ``estimate_memory`` total (a rank's, of ``tp``; ``fp8``: float8
    projections) is at most ``memory`` bytes (0: not even one sequence)."""
    def fits(b: int) -> bool:
        return estimate_memory(cfg, ctx, b, elem, chunk, reserve, tp, one_at_a_time, fp8)["total"] <= memory

    if not fits(1):
        return 0
    lo = 1
    while fits(2 * lo):
        lo *= 2
    hi = 2 * lo                          # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def decode_bytes_over(cfg: ModelConfig, ctx: int, batch: int, elem: int, steps: int, tp: int = 1,
                      fp8: bool = False) -> int:
    """Bytes ``steps`` decode steps read from context ``ctx`` on (step ``i`` at ``ctx + i``), on one
    of ``tp`` ranks (``fp8``: float8 projections)."""
    return sum(decode_bytes(cfg, ctx + i, batch, elem, tp, fp8)["total"] for i in range(steps))


def effective_chunk(chunk_size: int | None, ctx: int) -> int:
    """The chunk prefill uses for ``ctx`` tokens; 0 = unchunked (one piece)."""
    return int(chunk_size) if chunk_size and chunk_size < ctx else 0


def cell_analytics(cfg: ModelConfig, ctx: int, batch: int, elem: int, chunk: int,
                   reserve: int, tp: int = 1, one_at_a_time: bool = False, fp8: bool = False) -> dict[str, float]:
    """The analytic numbers of one cell (one rank's, of ``tp``; ``fp8``: float8 projections):
    prefill FLOPs (the same with fp8), decode bytes, memory estimate."""
    return {"flops": prefill_flops(cfg, ctx, batch, tp)["total"],
            "decode_bytes": decode_bytes(cfg, ctx, batch, elem, tp, fp8)["total"],
            "est_bytes": estimate_memory(cfg, ctx, batch, elem, chunk, reserve, tp, one_at_a_time, fp8)["total"]}
