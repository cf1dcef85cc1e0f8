"""State dicts: reading a weights file (safetensors, or a ``.pt`` / ``.bin`` only through
``torch.load(weights_only=True)``), loading one into a model, and building a model from one.

What every loader shares: ``checkpoint`` (our own folders) and ``convert`` (foreign formats).
Every failure a user can cause raises ``CheckpointError`` with a one-line message.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ModelConfig
from .model import CausalLM, build_model, fuse_state_dict


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or does not fit its config."""


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        if file.suffix in (".pt", ".bin", ".pth"):
            state = torch.load(str(file), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{file} does not hold a state dict of tensors")
            return state
    except CheckpointError:
        raise
    except Exception as e:  # corrupt or foreign file: safetensors / pickle errors of many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read weights {file}: {first}") from None
    raise CheckpointError(f"unsupported weights file {file} (use .safetensors, .pt or .bin)")


def load_state(model: CausalLM, state: dict[str, torch.Tensor], source: str) -> CausalLM:
    """Load ``state`` (our names; projections fused or named one by one) into ``model``, with a
    one-line ``CheckpointError`` for missing, unexpected or misshapen tensors."""
    state = fuse_state_dict(model, state)
    expected = model.state_dict()
    if model.config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise CheckpointError(f"{source} does not match its config: {'; '.join(parts)}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, config wants {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=not model.config.tie_embeddings)
    return model


def model_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str, device, dtype) -> CausalLM:
    """``cfg`` with the weights ``state`` (our names), in eval mode and without a tokenizer.

    Allocated once, in the target dtype on the target device (built on ``meta``, then each tensor
    made empty there): ``load_state_dict`` copies across device and dtype, so the peak is the model plus
    the state, not a float32 copy besides. What every loader (directories, ``yoco_core.convert``) uses.
    Each tensor is made by ``torch.empty`` of its shape (``to_empty`` itself calls ``empty_like`` on the
    meta tensors, which goes through ``torch._refs`` and imports sympy: 0.4 s before a first prompt);
    every one is written by the state after."""
    model = build_model(cfg, device="meta", dtype=dtype)
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    load_state(model, state, source)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval()
