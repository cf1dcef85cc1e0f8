"""YOCO and its Transformer baseline in one short file.

YOCO (arXiv 2405.05254) is a decoder-decoder::

    tokens -> embed -> self-decoder (L/2 layers: gated retention or sliding-window attention)
           -> kv_norm -> k_proj/v_proj -> ONE global KV cache
           -> cross-decoder (L/2 layers, each: its own queries, GQA over the global KV) -> norm -> head

Every block is pre-norm: ``x + mixer(norm(x))`` then ``x + SwiGLU(norm(x))`` (RMSNorm, RoPE as in
LLaMA, rotate-half layout). The Transformer baseline is the same block with causal GQA
self-attention and a KV cache per layer. A mixer returns its heads' output before its ``o_proj``:
the block adds ``o_proj`` of it (and the SwiGLU's ``down_proj``) into the residual stream with one
matmul each (``add_linear``).

The Transformer also runs the converted Hugging Face families (``convert/``), whose options the
config names (``config.py``): biases (then the plain add), per-head q/k norms, Gemma's GELU-tanh
MLP and its norms after attention and MLP (``x + post_norm(o_proj(...))``), a logit scale and
soft-caps, partial rotary, per-layer sliding windows with their own RoPE base, and the RoPE
scalings whose frequencies depend on the sequence length (``rope.py``, ``seq_len_of``).

Projections that read the same input are one matrix each (gRet's q | k | v | gate | decay logits,
attention's q | k | v, SwiGLU's gate | up, YOCO's global k | v): one matmul instead of several.
Checkpoints may name them one by one (``q_proj``, ``k_proj``, ...: every converted format does);
``fuse_state_dict`` concatenates those. The elementwise work (norms, RoPE, SwiGLU, gRet's output
gate, a whole gRet decoding step) runs as fused kernels (``kernels/fused``: Triton on the GPU, the
plain-PyTorch references on the CPU and wherever gradients are needed).

Both models share one API:

* ``model(input_ids)`` -> logits ``[B, T, V]`` for every position (the full forward, used for
  training and as the reference the cached paths are tested against);
* ``model.prefill(input_ids, chunk_size=None)`` -> (logits of the last position ``[B, V]``, cache);
* ``model.decode(input_ids, cache)`` -> (logits of the new positions ``[B, n, V]``, cache).

YOCO's prefill exits early: the self-decoder runs over the prompt (chunk by chunk, carrying its
constant-size state) and fills the global KV cache, and the cross-decoder runs only for the last
position, whose logits are the ones needed. That is what makes its prefill linear in the context.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import KVBuffer, StateSpec, TransformerCache, YOCOCache
from .config import ModelConfig
from .kernels import fused
from .kernels.attention import attend, sliding_window_attend
from .kernels.gret import gated_retention
from .rope import attention_scaling, depends_on_length, inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x):
        return fused.rms_norm(x, self.weight, self.eps)


def add_linear(x, a, linear: nn.Linear):
    """``x + linear(a)``: a projection added to the residual stream ``x``. Without gradients the
    matmul adds into ``x`` itself (``addmm`` with ``out=x``: cuBLAS reads the output it
    overwrites; unlike ``addmm_``, FLOP counters see it), one kernel and no new tensor instead of a
    matmul and an add, so ``x`` is the caller's to give up; with gradients (training), or for a
    projection that is not a plain ``nn.Linear`` (one whose forward does more, as tensor parallel's
    row-parallel projection summing the ranks' parts), the plain sum."""
    w = linear.weight
    if (torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or w.requires_grad)) \
            or type(linear) is not nn.Linear or linear.bias is not None or not x.is_contiguous() \
            or not x.dtype == a.dtype == w.dtype:
        return x + linear(a)
    x2 = x.view(-1, x.shape[-1])
    torch.addmm(x2, a.reshape(-1, a.shape[-1]), w.t(), out=x2)
    return x


def fused_linear(owner: nn.Module, name: str, dim: int, parts: tuple[tuple[str, int], ...],
                 bias: bool = False) -> None:
    """``owner.<name>``: one ``nn.Linear(dim, sum of rows)`` whose rows are the projections
    ``parts`` ((checkpoint name, rows), in order), recorded for ``fuse_state_dict``."""
    owner.fused_parts = {**getattr(owner, "fused_parts", {}), name: parts}
    setattr(owner, name, nn.Linear(dim, sum(rows for _, rows in parts), bias=bias))


def fuse_state_dict(model: nn.Module, state: dict) -> dict:
    """``state`` with every complete group of separately named projections (``...q_proj.weight``,
    ``...k_proj.weight``, ...; their biases likewise) concatenated into the fused matrix the model holds."""
    state = dict(state)
    for prefix, module in model.named_modules():
        p = prefix + "." if prefix else ""
        for name, parts in getattr(module, "fused_parts", {}).items():
            for kind in ("weight", "bias"):
                keys = [f"{p}{part}.{kind}" for part, _ in parts]
                if f"{p}{name}.{kind}" not in state and all(k in state for k in keys):
                    state[f"{p}{name}.{kind}"] = torch.cat([state.pop(k) for k in keys])
    return state


def split_state_dict(model: nn.Module, state: dict) -> dict:
    """The inverse of ``fuse_state_dict``: each fused matrix as its separately named projections."""
    state = dict(state)
    for prefix, module in model.named_modules():
        p = prefix + "." if prefix else ""
        for name, parts in getattr(module, "fused_parts", {}).items():
            for kind in ("weight", "bias"):
                if f"{p}{name}.{kind}" in state:
                    pieces = state.pop(f"{p}{name}.{kind}").split([rows for _, rows in parts])
                    state.update({f"{p}{part}.{kind}": w for (part, _), w in zip(parts, pieces)})
    return state


def rope_cos_sin(positions, head_dim: int, theta: float, dtype, scaling: dict | None = None, seq_len=None):
    """cos, sin ``[n, head_dim]`` for the absolute ``positions`` ``[n]`` (rotate-half layout),
    times the scaling's attention factor (yarn, longrope). ``seq_len``: the length of the forward
    step, for the scalings whose frequencies depend on it (dynamic, longrope; ``rope.py``).

    Computed once per forward step and shared by every layer of that head size."""
    freqs = torch.outer(positions.float(), inv_freq(head_dim, theta, scaling, positions.device, seq_len))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    factor = attention_scaling(head_dim, theta, scaling)
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
    return cos.to(dtype), sin.to(dtype)


class GatedMLP(nn.Module):
    """The feed-forward weights (SwiGLU; Gemma's GELU-tanh gate with ``act="gelu_tanh"``); the
    block adds ``down_proj(hidden(x))`` into the residual stream."""

    def __init__(self, dim: int, hidden: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.act = act
        fused_linear(self, "gate_up", dim, (("gate_proj", hidden), ("up_proj", hidden)), bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def hidden(self, x):
        if self.act == "silu":
            return fused.silu_mul(self.gate_up(x))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


class GatedRetention(nn.Module):
    """gRet: per-head data-dependent decay, swish output gate, per-head RMSNorm (no affine).

    ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t / sqrt(d)``, ``g_t = logsigmoid(W_gt x_t) / 16``,
    output ``W_o (swish(W_g x_t) * RMSNorm(o_t))``. State: ``[B, H, d, d]`` float32, whatever the
    context length. One matrix ``proj`` makes q | k | v | g | gt.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = cfg.dim, cfg.n_self_heads, cfg.self_head_dim
        self.normalizer, self.eps = cfg.gate_logit_normalizer, cfg.norm_eps
        fused_linear(self, "proj", d, (("q_proj", d), ("k_proj", d), ("v_proj", d), ("g_proj", d),
                                       ("gt_proj", self.n_heads)))
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, rope, state=None, state_out=None):
        """``state_out`` (a one-token step only): write the new state there (in place if it is
        ``state``), as the graph-captured decoding step does."""
        p = self.proj(x)
        if x.shape[1] == 1 and state is not None:      # a decoding step: one fused kernel after the matmul
            H, D = self.n_heads, self.head_dim
            return fused.gret_decode(p, *rope, state, H, D ** -0.5, self.normalizer, self.eps, state_out)
        q, k, v, g = self.heads(p, rope)
        o, state = gated_retention(q, k, v, g, self.head_dim ** -0.5, state)
        return self.output(o, p), state

    def heads(self, p, rope):
        """q, k, v ``[B, n, H, D]`` (with RoPE) and the decay logits ``g`` ``[B, n, H]`` (float32)
        of the fused projection ``p``; the heads' width is ``H * D``, the model's dim (a
        tensor-parallel rank's share of it)."""
        B, n, _ = p.shape
        H, D = self.n_heads, self.head_dim
        d = H * D
        q, k, v = fused.rope(p[..., : 3 * d].view(B, n, 3 * H, D), *rope, n_first=H, n_plain=H)
        return q, k, v, F.logsigmoid(p[..., 4 * d:].float()) / self.normalizer

    def output(self, o, p):
        """The heads' output ``o`` normed and gated by ``p``'s output-gate part (before ``o_proj``)."""
        d = self.n_heads * self.head_dim
        return fused.head_norm_gate(o, p[..., 3 * d: 4 * d], self.eps)


class SlidingWindowAttention(nn.Module):
    """SWA with RoPE: each query sees its last ``window`` keys, itself included.

    State: a ring ``[2, B, H, window, d]`` (keys, values; ``StateSpec.empty``) made with the cache,
    whose address never changes: position ``p`` lives in slot ``p % window``. A step writes its
    keys into the ring in place; one token attends the whole ring with the split-KV decode kernel
    (attention is order-invariant over keys, and the cached keys already carry their RoPE), so
    the decoding step has no shape or host value that changes with the position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_heads, self.head_dim = cfg.dim, cfg.n_self_heads, cfg.self_head_dim
        self.window = cfg.window
        fused_linear(self, "qkv", d, (("q_proj", d), ("k_proj", d), ("v_proj", d)))
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, rope, ring=None, at=None, start: int | None = None):
        """Without ``ring``: the full forward. With it, the tokens continue the ring: ``at`` (a
        device tensor ``[1]``, one token per row): the decoding step at that position
        (graph-safe); otherwise ``start`` (int): the position of the first of ``n`` tokens (a
        prefill chunk, a multi-token decode)."""
        B, n, _ = x.shape
        q, k, v = self.heads(x, rope)
        if ring is None:
            o = sliding_window_attend(q, k, v, self.window)
        elif at is not None:
            o = self._step(q, k, v, ring, at)
        else:
            o = self._chunk(q, k, v, ring, start)
        return o.transpose(1, 2).reshape(B, n, self.n_heads * self.head_dim), None

    def heads(self, x, rope):
        """q, k, v ``[B, H, n, D]`` of ``x``, with RoPE."""
        B, n, _ = x.shape
        H, D = self.n_heads, self.head_dim
        p = self.qkv(x)
        return tuple(t.transpose(1, 2) for t in fused.rope(p.view(B, n, 3 * H, D), *rope, n_first=H, n_plain=H))

    def _step(self, q, k, v, ring, at):
        """One token per row at the device position ``at``: written at slot ``at % window``, then
        attention over the first ``min(at + 1, window)`` slots, all computed on the device."""
        W = self.window
        slot = torch.remainder(at, W)
        ring[0].index_copy_(2, slot, k)
        ring[1].index_copy_(2, slot, v)
        return attend(q, ring[0], ring[1], torch.clamp(at + 1, max=W))

    def _chunk(self, q, k, v, ring, start: int):
        """``n`` tokens from position ``start``: the band attention over the previous
        ``window - 1`` keys (gathered from the ring in temporal order) and the chunk's own; then
        the chunk's last ``min(n, window)`` keys written into their slots."""
        W, n = self.window, q.shape[2]
        before = min(start, W - 1)
        if before:
            order = torch.arange(start - before, start, device=q.device) % W
            k_all = torch.cat((ring[0].index_select(2, order), k), dim=2)
            v_all = torch.cat((ring[1].index_select(2, order), v), dim=2)
        else:
            k_all, v_all = k, v
        o = sliding_window_attend(q, k_all, v_all, W)
        kept = min(n, W)
        slots = torch.arange(start + n - kept, start + n, device=q.device) % W
        ring[0].index_copy_(2, slots, k[:, :, n - kept:])
        ring[1].index_copy_(2, slots, v[:, :, n - kept:])
        return o


class CrossAttention(nn.Module):
    """A cross-decoder layer's attention: own queries, GQA over the shared global KV."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cross, k, v, length=None):
        """``cross``: (rope or None, query scale ``[n]`` or None) of the new positions."""
        B, n, _ = x.shape
        rope, qscale = cross
        q = self.q_proj(x).view(B, n, self.n_heads, self.head_dim)
        if rope is not None:
            q = fused.rope(q, *rope)
        if qscale is not None:
            q = q * qscale[None, :, None, None]
        o = attend(q.transpose(1, 2), k, v, length)
        return o.transpose(1, 2).reshape(B, n, -1)


class SelfAttention(nn.Module):
    """The Transformer's causal GQA attention; its cache is one KVBuffer. What converted families
    add: biases, per-head q / k RMSNorm before RoPE (``qk_norm``), a sliding ``window``, a logit
    scale other than ``head_dim ** -0.5`` and logit soft-capping (``config.py``)."""

    def __init__(self, cfg: ModelConfig, window: int = 0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.window, self.scale, self.softcap = window, cfg.attn_scale or None, cfg.attn_softcap
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        fused_linear(self, "qkv", cfg.dim, (("q_proj", q), ("k_proj", kv), ("v_proj", kv)), bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q, cfg.dim, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x, rope, buf: KVBuffer | None = None, at=None):
        """``at``: a device tensor ``[1]``, the position of the one new token: the graph-safe
        decode step (write in place, attend the whole buffer up to ``at + 1``)."""
        B, n, _ = x.shape
        q, k, v = self.heads(x, rope)
        length = None
        if at is not None:
            buf.write_at(at, k, v)
            k, v, length = buf.k, buf.v, at + 1
        elif buf is not None:
            buf.append(k, v)
            k, v = buf.view()
        o = attend(q, k, v, length, scale=self.scale, window=self.window, softcap=self.softcap)
        return o.transpose(1, 2).reshape(B, n, -1), buf

    def heads(self, x, rope):
        """q ``[B, H, n, D]``, k, v ``[B, H_kv, n, D]`` of ``x``: projected, q / k normed where the
        family has it, with RoPE."""
        B, n, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        p = self.qkv(x)
        qk = p[..., : (H + Hkv) * D].view(B, n, H + Hkv, D)
        if self.q_norm is None:
            q, k = fused.rope(qk, *rope, n_first=H)
        else:
            q, k = fused.rope(self.q_norm(qk[:, :, :H]), *rope), fused.rope(self.k_norm(qk[:, :, H:]), *rope)
        v = p[..., (H + Hkv) * D:].view(B, n, Hkv, D)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = mixer
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.dim, cfg.ffn_dim, cfg.mlp_act, cfg.mlp_bias)
        self.attn_post_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.post_norms else None
        self.mlp_post_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.post_norms else None

    def forward(self, x, *args):
        """``x``: the residual stream, updated in place when no gradient is needed (``add_linear``)."""
        o, extra = self.attn(self.attn_norm(x), *args)
        return self.residual(x, o), extra

    def residual(self, x, o):
        """What follows the mixer: its heads' output ``o`` projected into the residual stream ``x``,
        then the MLP's."""
        return self._mlp(self._add(x, o, self.attn.o_proj, self.attn_post_norm))

    def _mlp(self, x):
        return self._add(x, self.mlp.hidden(self.mlp_norm(x)), self.mlp.down_proj, self.mlp_post_norm)

    @staticmethod
    def _add(x, a, linear, post_norm):
        """``x + linear(a)``, or with Gemma's post-norm ``x + post_norm(linear(a))``."""
        return add_linear(x, a, linear) if post_norm is None else x + post_norm(linear(a))


class CrossBlock(Block):
    def forward(self, x, cross, k, v, length=None):
        return self._mlp(add_linear(x, self.attn(self.attn_norm(x), cross, k, v, length), self.attn.o_proj))


class CausalLM(nn.Module):
    """What both architectures share: embedding, head, prefill / decode drivers, init."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tokenizer = None      # none by construction: load_model attaches one (tokenizer.tokenizer_for)
        w = torch.empty(cfg.vocab_size, cfg.dim)      # on the device built on (build_model's context)
        if not w.is_meta:      # nn.Embedding's own init, as it would run. On meta it would go through
            nn.init.normal_(w)  # torch._refs, which imports torch._dynamo (1 s on the CPU) before a first prompt
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, _weight=w)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std, generator=generator)
            elif isinstance(m, RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def embed_tokens(self, input_ids):
        x = self.embed(input_ids)
        scale = self.config.embed_scale
        if scale == 1.0:
            return x
        if self.config.arch == "transformer":        # Gemma: the scale rounded to the model's dtype first
            scale = float(torch.tensor(scale, dtype=x.dtype))
        return x * scale

    def rope(self, positions, head_dim: int, seq_len=None, local: bool = False):
        """cos, sin of ``positions`` for heads of ``head_dim`` (its first ``config.rope_dim``
        dims where that is set); ``local``: the windowed layers' own RoPE (``local_rope_theta``).
        ``seq_len`` (int or device tensor): the step's sequence length, for the scalings that
        depend on it (``seq_len_of``)."""
        cfg = self.config
        rot = cfg.rope_dim if cfg.rope_dim and head_dim == cfg.head_dim else head_dim
        if local and cfg.local_rope_theta:
            return rope_cos_sin(positions, rot, cfg.local_rope_theta, self.dtype, cfg.local_rope_scaling, seq_len)
        return rope_cos_sin(positions, rot, cfg.rope_theta, self.dtype, cfg.rope_scaling, seq_len)

    def seq_len_of(self, end, horizon: int | None = None):
        """The sequence length a step ending at position ``end`` (exclusive; int or device
        tensor) gives length-dependent RoPE scalings, as transformers computes it (the largest
        position + 1), or at least ``horizon``: a chunked prefill gives every chunk the whole
        prompt's length, so it equals the full forward. None when the RoPE does not depend on it."""
        cfg = self.config
        if not (depends_on_length(cfg.rope_scaling) or depends_on_length(cfg.local_rope_scaling)):
            return None
        if horizon is None:
            return end
        return torch.clamp(end, min=horizon) if isinstance(end, torch.Tensor) else max(end, horizon)

    def positions(self, start: int, n: int):
        return torch.arange(start, start + n, device=self.device)

    def logits(self, x):
        out = self.lm_head(self.norm(x)).float()
        cap = self.config.logit_softcap
        return out if not cap else torch.tanh(out / cap) * cap

    # -- the cached path ---------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int):
        raise NotImplementedError

    def _run(self, input_ids, cache, need: str | None, horizon: int | None = None):
        """Feed ``input_ids`` at the cache's position; return logits for ``need``
        (``"all"`` new positions, the ``"last"`` one, or ``None``). ``horizon``: the whole
        prompt's length during a chunked prefill (``seq_len_of``)."""
        raise NotImplementedError

    def _check_length(self, total: int) -> None:
        if total > self.config.max_seq_len:
            raise ValueError(f"{total} tokens exceed the model's maximum of {self.config.max_seq_len}")

    @torch.inference_mode()
    def prefill(self, input_ids, chunk_size: int | None = None, reserve: int = 256):
        """Process the prompt; return (logits of its last position ``[B, V]``, cache).

        ``chunk_size`` bounds activation memory: the prompt goes through in pieces of that many
        tokens, each continuing from the cache (None: one piece). ``reserve`` preallocates room
        for that many decoded tokens.
        """
        return chunked_prefill(self, input_ids, chunk_size, reserve)

    @torch.inference_mode()
    def decode(self, input_ids, cache):
        """Feed new tokens ``[B, n]`` after the cache; return (their logits ``[B, n, V]``, cache)."""
        self._check_length(cache.length + input_ids.shape[1])
        return self._run(input_ids, cache, "all"), cache


def chunked_prefill(model, input_ids, chunk_size: int | None, reserve: int):
    """The prefill driver of every model with ``new_cache``, ``_check_length`` and ``_run(ids,
    cache, need, horizon)`` (ours, and the transformers fallback): the prompt in pieces of
    ``chunk_size`` tokens (None or 0: one), each continuing the cache, logits only for the last
    piece; returns (logits of the last position ``[B, V]``, cache)."""
    B, T = input_ids.shape
    if T == 0:
        raise ValueError("prefill needs at least one token")
    model._check_length(T)
    chunk_size = None if chunk_size is None else int(chunk_size)
    if chunk_size is not None and chunk_size < 0:
        raise ValueError(f"chunk_size must be positive (or None), not {chunk_size}")
    cache = model.new_cache(B, T + reserve)
    step = T if not chunk_size or chunk_size >= T else chunk_size
    out = None
    for s in range(0, T, step):
        out = model._run(input_ids[:, s: s + step], cache, "last" if s + step >= T else None, horizon=T)
    return out[:, -1], cache


class YOCO(CausalLM):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        half = cfg.n_layers // 2
        mixer = GatedRetention if cfg.self_decoder == "gret" else SlidingWindowAttention
        self.self_layers = nn.ModuleList(Block(cfg, mixer(cfg)) for _ in range(half))
        self.kv_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.n_kv_heads = cfg.n_kv_heads      # the global cache's (a tensor-parallel rank's share)
        kv = cfg.n_kv_heads * cfg.head_dim
        fused_linear(self, "kv_proj", cfg.dim, (("k_proj", kv), ("v_proj", kv)))
        self.cross_layers = nn.ModuleList(CrossBlock(cfg, CrossAttention(cfg)) for _ in range(half))

    def global_kv(self, x, rope):
        """The single KV cache of the cross-decoder, ``[B, H_kv, n, d]`` each."""
        B, n, _ = x.shape
        cfg = self.config
        kv = self.kv_proj(self.kv_norm(x)).view(B, n, 2 * self.n_kv_heads, cfg.head_dim)
        k, v = kv[:, :, : self.n_kv_heads], kv[:, :, self.n_kv_heads:]
        if rope is not None:
            k = fused.rope(k, *rope)
        return k.transpose(1, 2), v.transpose(1, 2)

    def ropes(self, positions, seq_len=None):
        """(self-decoder rope, cross-decoder (rope or None, query scale or None)) for ``positions``.

        The query scale (``cross_logn = N``): ``max(1, ln(p + 1) / ln N)`` at position ``p``, so
        attention over more keys stays as sharp as it was at N keys (log-length scaling, as in
        Qwen's logn attention and scalable softmax); with NoPE keys (``cross_rope=False``) this is
        what lets retrieval hold far past the training length."""
        cfg = self.config
        rs = self.rope(positions, cfg.self_head_dim, seq_len)
        rc = None
        if cfg.cross_rope:
            rc = rs if cfg.self_head_dim == cfg.head_dim else self.rope(positions, cfg.head_dim, seq_len)
        scale = None
        if cfg.cross_logn:
            scale = ((positions.float() + 1).log() / math.log(cfg.cross_logn)).clamp(min=1.0).to(self.dtype)
        return rs, (rc, scale)

    def forward(self, input_ids):
        T = input_ids.shape[1]
        rs, cross = self.ropes(self.positions(0, T), self.seq_len_of(T))
        x = self.embed_tokens(input_ids)
        for layer in self.self_layers:
            x, _ = layer(x, rs)
        k, v = self.global_kv(x, cross[0])
        for layer in self.cross_layers:
            x = layer(x, cross, k, v)
        return self.logits(x)

    def new_cache(self, batch: int, capacity: int) -> YOCOCache:
        cfg = self.config
        kv = KVBuffer(batch, self.n_kv_heads, cfg.head_dim, capacity, self.device, self.dtype)
        # SWA's rings preallocated here, gRet's states by the prefill; the heads the layers hold
        spec = replace(StateSpec.of(cfg, self.dtype), heads=self.self_layers[0].attn.n_heads)
        return YOCOCache(kv=kv, states=[spec.empty(batch, self.device) for _ in self.self_layers], state_spec=spec)

    def _run(self, input_ids, cache: YOCOCache, need, horizon=None):
        n = input_ids.shape[1]
        positions = self.positions(cache.length, n)
        seq_len = self.seq_len_of(cache.length + n, horizon)
        rs, cross = self.ropes(positions, seq_len)
        x = self.embed_tokens(input_ids)
        swa = self.config.self_decoder == "swa"
        for i, layer in enumerate(self.self_layers):
            if swa:       # the ring written in place; one token: the decoding step at that position
                x, _ = layer(x, rs, cache.states[i], positions if n == 1 else None, cache.length)
            else:
                x, cache.states[i] = layer(x, rs, cache.states[i])
        cache.kv.append(*self.global_kv(x, cross[0]))
        if need is None:                      # early exit: the cross-decoder is not needed here
            return None
        if need == "last":
            x = x[:, -1:]
            cross = self.ropes(positions[-1:], seq_len)[1]
        k, v = cache.kv.view()
        for layer in self.cross_layers:
            x = layer(x, cross, k, v)
        return self.logits(x)

    def decode_step(self, input_ids, cache: YOCOCache, at):
        """One token per row at the device position ``at`` ``[1]``, with no host sync and no shape
        that depends on the context length: what ``CUDAGraphDecoder`` captures. States are
        updated in place (gRet's state, SWA's ring at slot ``at % window``); the caller advances
        ``cache`` (and ``at``) afterwards."""
        rs, cross = self.ropes(at, self.seq_len_of(at + 1))
        x = self.embed_tokens(input_ids)
        swa = self.config.self_decoder == "swa"
        for i, layer in enumerate(self.self_layers):
            state = cache.states[i]        # written in place: gRet's state, SWA's ring
            x, _ = layer(x, rs, state, at) if swa else layer(x, rs, state, state)
        cache.kv.write_at(at, *self.global_kv(x, cross[0]))
        length = at + 1
        for layer in self.cross_layers:
            x = layer(x, cross, cache.kv.k, cache.kv.v, length)
        return self.logits(x)


class Transformer(CausalLM):
    """Causal GQA self-attention layers, each with its own KV cache: the baseline, and every
    natively converted Hugging Face family (layer ``i`` attends a sliding window where
    ``config.window_of(i)`` says so, with the local RoPE where the config has one)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList(Block(cfg, SelfAttention(cfg, cfg.window_of(i))) for i in range(cfg.n_layers))

    def layer_ropes(self, positions, seq_len) -> list:
        """Each layer's cos, sin for ``positions`` (one computation per distinct RoPE)."""
        cfg = self.config
        glob = self.rope(positions, cfg.head_dim, seq_len)
        if not cfg.local_rope_theta:
            return [glob] * cfg.n_layers
        local = self.rope(positions, cfg.head_dim, seq_len, local=True)
        return [local if cfg.window_of(i) else glob for i in range(cfg.n_layers)]

    def forward(self, input_ids):
        T = input_ids.shape[1]
        ropes = self.layer_ropes(self.positions(0, T), self.seq_len_of(T))
        x = self.embed_tokens(input_ids)
        for layer, rope in zip(self.layers, ropes):
            x, _ = layer(x, rope)
        return self.logits(x)

    def new_cache(self, batch: int, capacity: int) -> TransformerCache:
        cfg = self.config
        return TransformerCache([KVBuffer(batch, layer.attn.n_kv_heads, cfg.head_dim, capacity, self.device,
                                          self.dtype) for layer in self.layers])

    def _run(self, input_ids, cache: TransformerCache, need, horizon=None):
        n = input_ids.shape[1]
        ropes = self.layer_ropes(self.positions(cache.length, n), self.seq_len_of(cache.length + n, horizon))
        x = self.embed_tokens(input_ids)
        for layer, buf, rope in zip(self.layers, cache.layers, ropes):
            x, _ = layer(x, rope, buf)
        if need is None:
            return None
        return self.logits(x[:, -1:] if need == "last" else x)

    def decode_step(self, input_ids, cache: TransformerCache, at):
        """One token per row at the device position ``at`` ``[1]`` (see ``YOCO.decode_step``)."""
        ropes = self.layer_ropes(at, self.seq_len_of(at + 1))
        x = self.embed_tokens(input_ids)
        for layer, buf, rope in zip(self.layers, cache.layers, ropes):
            x, _ = layer(x, rope, buf, at)
        return self.logits(x)


def model_class(config: ModelConfig) -> type[CausalLM]:
    return YOCO if config.arch == "yoco" else Transformer


def build_model(config: ModelConfig, device=None, dtype=None, seed: int | None = 0) -> CausalLM:
    """A model of ``config`` with random weights (normal, std 0.02; ``seed`` makes it repeatable).

    On the ``meta`` device the weights are left unallocated (for loading into). The model has no
    tokenizer (``model.tokenizer`` is None): ``tokenizer.tokenizer_for(model.config)`` gives it."""
    device = torch.device(device or "cpu")
    with device:
        model = model_class(config)(config)
        if device.type != "meta":
            gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
            model.init_weights(generator=gen)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
