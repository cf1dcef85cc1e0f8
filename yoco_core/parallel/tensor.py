"""Tensor parallelism for inference, applied from outside the model (as gpt-fast does).

``apply_tensor_parallel(model, group)`` shards a built, loaded model of ours (YOCO with either
self-decoder, or the Transformer) in place over the ``N`` ranks of a ``torch.distributed`` group,
each rank holding the same weights beforehand:

* column-parallel (rows split, heads across ranks: rank ``r`` keeps heads ``r H/N .. (r+1) H/N``):
  every projection that makes heads or the FFN's hidden units. A fused matrix (``fused_parts``:
  gRet's q | k | v | gate | decay logits, attention's q | k | v, SwiGLU's gate | up, YOCO's global
  k | v) is split part by part, so a rank's matrix is its share of each part, in the same order;
  the cross-decoder's queries likewise. Biases follow their rows.
* row-parallel (columns split the same way): every mixer's ``o_proj`` and the FFN's
  ``down_proj``, replaced by ``RowParallelLinear``, whose forward all-reduces the ranks' partial
  products (then adds its bias, once). ``model.add_linear`` calls the forward of any projection
  that is not a plain ``nn.Linear``, so the residual stream is added once, not once per rank.
* the head counts the mixers hold (``n_heads``, ``n_kv_heads``, YOCO's ``n_kv_heads``) become the
  rank's, so the kernels and the caches (``new_cache``: the global KV cache, SWA's rings, gRet's
  states, the Transformer's KV buffers) see ``H/N`` query and ``H_kv/N`` KV heads.

Embeddings, norms and the LM head stay whole on every rank, so every rank computes the same
logits. ``model.config`` is left as it was (the whole model's shape). Without gradients only: the
all-reduce is not differentiable here.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..model import CausalLM, CrossAttention, GatedMLP, GatedRetention, SelfAttention, SlidingWindowAttention

MIXERS = (GatedRetention, SlidingWindowAttention, SelfAttention, CrossAttention)


def max_over(group, value: int, device) -> int:
    """The largest of every rank's ``value`` over ``group`` (an all-reduce, so each rank of the
    group must call it as often as the others); ``value`` itself without a group. How the ranks
    of a tensor-parallel group take decisions alike that each made on its own clock or signal."""
    if group is None:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def tensor_parallel_problem(cfg: ModelConfig, world: int) -> str | None:
    """Why ``cfg`` cannot be split over ``world`` ranks (one line naming the config), or None."""
    if world < 1:
        return f"tensor parallel needs at least 1 rank, not {world}"
    counts = {"n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "ffn_dim": cfg.ffn_dim}
    if cfg.arch == "yoco":
        counts["n_self_heads"] = cfg.n_self_heads
    if bad := [f"{k}={v}" for k, v in counts.items() if v % world]:
        return (f"cannot split {cfg.name} over {world} tensor-parallel ranks: {', '.join(bad)} "
                f"not divisible by {world}")
    return None


class RowParallelLinear(nn.Linear):
    """A rank's columns of a projection (``in_features`` is its share): the forward sums every
    rank's partial product over ``group`` (all-reduce) and adds the bias once."""

    def __init__(self, linear: nn.Linear, cols: slice, group):
        super().__init__(cols.stop - cols.start, linear.out_features, bias=linear.bias is not None,
                         device="meta", dtype=linear.weight.dtype)
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].clone(), linear.weight.requires_grad)
        if linear.bias is not None:
            self.bias = linear.bias
        self.group = group

    def forward(self, a):
        out = F.linear(a, self.weight)
        dist.all_reduce(out, group=self.group)
        return out if self.bias is None else out + self.bias


def _rows(linear: nn.Linear, parts: list[int], rank: int, world: int) -> None:
    """Keep, of each block of ``parts`` rows (in order), the rank's share: in place."""
    keep, start = [], 0
    for rows in parts:
        share = rows // world
        keep.append(torch.arange(start + rank * share, start + (rank + 1) * share))
        start += rows
    idx = torch.cat(keep).to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(0, idx), linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach().index_select(0, idx), linear.bias.requires_grad)
    linear.out_features = len(idx)


def _column_parallel(module: nn.Module, rank: int, world: int) -> None:
    """Every fused projection of ``module`` split part by part (its ``fused_parts`` updated)."""
    for name, parts in getattr(module, "fused_parts", {}).items():
        _rows(getattr(module, name), [rows for _, rows in parts], rank, world)
        module.fused_parts[name] = tuple((part, rows // world) for part, rows in parts)


def _row_parallel(module: nn.Module, name: str, rank: int, world: int, group) -> None:
    linear = getattr(module, name)
    share = linear.in_features // world
    setattr(module, name, RowParallelLinear(linear, slice(rank * share, (rank + 1) * share), group))


def apply_tensor_parallel(model: CausalLM, group=None) -> CausalLM:
    """Shard ``model`` (ours, every rank holding the same weights) in place over the ranks of
    ``group`` (the default process group if None); returns it. Raises ValueError (one line naming
    the config) where the heads, KV heads or FFN width do not divide by the group's size, before
    changing anything. With one rank the model is returned as it is.

    Afterwards no parameter requires a gradient (inference only) and ``model.tensor_parallel`` is
    ``(rank, world)``."""
    if not isinstance(model, CausalLM):
        raise ValueError(f"tensor parallel splits our own models, not {type(model).__name__}")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if why := tensor_parallel_problem(model.config, world):
        raise ValueError(why)
    if world == 1:
        return model
    mixers = [m for m in model.modules() if isinstance(m, MIXERS)]
    mlps = [m for m in model.modules() if isinstance(m, GatedMLP)]
    for m in mixers:
        _column_parallel(m, rank, world)
        if isinstance(m, CrossAttention):
            _rows(m.q_proj, [m.q_proj.out_features], rank, world)
        _row_parallel(m, "o_proj", rank, world, group)
        m.n_heads //= world
        if hasattr(m, "n_kv_heads"):
            m.n_kv_heads //= world
    for m in mlps:
        _column_parallel(m, rank, world)
        _row_parallel(m, "down_proj", rank, world, group)
    if "kv_proj" in getattr(model, "fused_parts", {}):          # YOCO's global k | v
        _column_parallel(model, rank, world)
        model.n_kv_heads //= world
    model.requires_grad_(False)
    model.tensor_parallel = (rank, world)
    return model
