"""Gated retention: dispatch between fla-core's kernels (GPU) and our PyTorch forms (CPU).

fla-core's ``chunk_simple_gla`` implements exactly this recurrence (scalar per-head decay ``g``,
scale on q) in the same ``[B, T, H, K]`` layout, so on a CUDA device with fla-core installed it runs
the prefill; everywhere else the chunkwise PyTorch form does. A single decoding step is the
recurrent form in plain PyTorch (``gret_step``) on every device.
Set ``YOCO_KERNEL_GRET=torch`` (or run inside ``kernels.backend.override(gret="torch")``) to force
the PyTorch forms.
"""
from __future__ import annotations

import functools

import torch

from .. import backend
from .chunk import gret_chunk, gret_step
from .naive import gret_parallel_ref, gret_recurrent_ref

__all__ = ["gated_retention", "gret_chunk", "gret_step", "gret_parallel_ref", "gret_recurrent_ref",
           "fla_available", "fla_backward_refusal"]


@functools.lru_cache(maxsize=None)
def _fla_chunk():
    from ...warmup import enable_autotune_cache

    enable_autotune_cache()          # before fla-core's @triton.autotune runs: its results stay on disk
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # not installed, or its import fails (no GPU): the PyTorch path runs
        return None
    return chunk_simple_gla


def fla_available() -> bool:
    return _fla_chunk() is not None


def fla_backward_refusal() -> str | None:
    """The line fla-core's own flags give for refusing its gated-retention backward here, else None.
    fla-core 0.6 raises in ``chunk_bwd_dqkwg`` on Hopper with Triton >= 3.4 and < 3.7.1 (its issue
    #640) unless tilelang is installed; it raises only after its forward kernels are compiled and
    autotuned (about a minute), so training asks first. A fla-core without these flags: None."""
    import importlib.util

    try:
        from fla import utils
    except Exception:
        return None
    hopper, t340, t371 = (getattr(utils, k, None) for k in ("IS_NVIDIA_HOPPER", "TRITON_ABOVE_3_4_0",
                                                            "TRITON_ABOVE_3_7_1"))
    if (None not in (hopper, t340, t371) and hopper and t340 and not t371
            and importlib.util.find_spec("tilelang") is None):
        import triton

        return (f"fla-core refuses its gated backward on Hopper with Triton {triton.__version__} "
                "(>= 3.4.0 and < 3.7.1, fla-core issue #640) without tilelang")
    return None


def backend_for(x: torch.Tensor) -> str:
    return backend.select("gret", x, available=fla_available)


def gated_retention(q, k, v, g, scale: float, initial_state=None):
    """Returns ``(o, final_state)``; ``final_state`` is float32 ``[B, H, K, V]``."""
    if q.shape[1] == 1 and initial_state is not None:
        # one step: the recurrent form (a few einsums on the [B, H, K, V] state). The models'
        # decoding steps do not come here: they run kernels/fused.gret_decode (RoPE to gate in one)
        return gret_step(q, k, v, g, scale, initial_state)
    if backend_for(q) == "fla":
        if q.dtype != v.dtype or k.dtype != v.dtype:   # autocast: q, k leave RoPE in float32, v is bf16
            q, k = q.to(v.dtype), k.to(v.dtype)
        B, T, H, K = q.shape
        V = v.shape[-1]
        per_row = max(T * H * max(K, V), -(-T // FLA_CHUNK) * H * K * V)    # its inputs, its chunk states
        rows = max(1, FLA_MAX_ELEMENTS // per_row)
        if rows >= B:
            return _fla(q, k, v, g, scale, initial_state)
        o, state = None, None
        for s in range(0, B, rows):      # each slice's result into its place (no second copy of o)
            o_s, state_s = _fla(q[s:s + rows], k[s:s + rows], v[s:s + rows], g[s:s + rows], scale,
                                None if initial_state is None else initial_state[s:s + rows])
            if o is None:
                o = o_s.new_empty((B, *o_s.shape[1:]))
                state = state_s.new_empty((B, *state_s.shape[1:]))
            o[s:s + rows], state[s:s + rows] = o_s, state_s
            del o_s, state_s
        return o, state
    return gret_chunk(q, k, v, g, scale, initial_state)


# fla-core 0.6.0 forms offsets into its tensors in 32 bits (batch index x T x H x K for the inputs;
# its per-chunk states [B, T / 64, H, K, V] likewise): a batch whose inputs or states reach 2^31
# elements reads out of bounds (YOCO-3B at 128K, 8K chunks, batch 88 on an H200: an illegal memory
# access), so larger batches go through it in slices below that
FLA_MAX_ELEMENTS = 2**31 - 1
FLA_CHUNK = 64                 # chunk_simple_gla's chunk length


def _fla(q, k, v, g, scale, initial_state):
    o, state = _fla_chunk()(q=q, k=k, v=v, g=g.float(), scale=scale,
                            initial_state=None if initial_state is None else initial_state.float(),
                            output_final_state=True)
    return o, state.float()
