"""One key table type and the one function that applies any table (gpt-fast's ``weight_map``).

A ``Table`` maps a foreign checkpoint's tensor names to ours, ``{}`` standing for a layer index
(``"layers.{}.self_attn.q_proj.weight" -> "layers.{}.attn.q_proj.weight"``); the few tensors that
need more than a new name say so next to it:

* ``rope``: q/k projections whose RoPE rotates interleaved pairs (2i, 2i+1) while ours rotates
  (i, i + d/2). Permuting each head's output rows to ``[0, 2, 4, ..., 1, 3, 5, ...]`` turns one into
  the other exactly (q.k is unchanged as q and k get the same permutation; v is untouched). The
  value names the head size: ``"head_dim"`` or ``"self_head_dim"`` of our config.
* ``plus_one``: RMSNorm weights stored as offsets from one (Gemma's ``x * (1 + w)``), loaded as
  ``1 + w`` (computed in float32), so our norm is the plain ``x * w``.
* the head, ``lm_head.weight``: with tied embeddings it is optional and dropped (ours is the
  embedding).

Everything is read from local files only: JSON, safetensors, ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..state import CheckpointError, read_state_dict
from ..config import ModelConfig

HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Table:
    """``names``: theirs -> ours; ``rope``: ours -> the head size of its row permutation;
    ``ignore``: substrings of their names that are dropped silently (RoPE buffers);
    ``plus_one``: substrings of OUR names whose tensors are stored as ``w`` for ``1 + w``."""
    names: dict[str, str]
    rope: dict[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ("rotary",)
    plus_one: tuple[str, ...] = ()


def interleaved_to_half(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of a q/k projection ``[H * head_dim, in]`` reordered per head from interleaved RoPE
    pairs (2i, 2i+1) to rotate-half pairs (i, i + head_dim/2)."""
    if w.shape[0] % head_dim or head_dim % 2:
        raise CheckpointError(f"cannot split {w.shape[0]} rows into heads of {head_dim}")
    perm = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    h = w.shape[0] // head_dim
    return w.reshape(h, head_dim, -1)[:, perm].reshape(w.shape)


def remap(state: dict[str, torch.Tensor], table: Table, cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """``state`` (their names) under our names, by ``table``: each ``{}`` name expanded over the
    layers of one stack (all of a Transformer's; half of YOCO's, the self- and the cross-decoder
    alike). A tensor the table expects and ``state`` lacks, or one ``state`` holds and the table
    does not know, is a one-line ``CheckpointError``."""
    depth = cfg.n_layers if cfg.arch == "transformer" else cfg.n_layers // 2
    out, used = {}, set()
    for theirs, ours in table.names.items():
        for i in range(depth) if "{}" in theirs else (None,):
            t, o = theirs.replace("{}", str(i)), ours.replace("{}", str(i))
            if ours == HEAD and cfg.tie_embeddings:
                used.add(t)
                continue
            if t not in state:
                raise CheckpointError(f"{source}: missing tensor {t}")
            used.add(t)
            head = table.rope.get(ours)
            out[o] = interleaved_to_half(state[t], getattr(cfg, head)) if head else state[t]
            if any(s in ours for s in table.plus_one):      # kept in float32: loading casts once
                out[o] = 1.0 + out[o].float()
    extra = sorted(k for k in set(state) - used if not any(s in k for s in table.ignore))
    if extra:
        raise CheckpointError(f"{source}: {len(extra)} tensors this loader does not know (e.g. {extra[0]})")
    return out


def strip_prefixes(state: dict, prefixes: tuple[str, ...]) -> dict:
    """``state`` with the first of ``prefixes`` that a name starts with removed from it."""
    out = {}
    for k, v in state.items():
        pre = next((p for p in prefixes if k.startswith(p)), "")
        out[k[len(pre):]] = v
    return out


def read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return data


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All safetensors shards of a folder (or one .bin / .pt state dict), merged."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        shards = sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not shards:
        raise CheckpointError(f"no weights (.safetensors, .bin or .pt) in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in shards:
        state.update(read_state_dict(f))
    return state
