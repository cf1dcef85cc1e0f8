"""Tensor parallelism (``yoco_core.parallel.tensor``): two gloo processes on the CPU, each
holding half of every architecture's heads, give the one-process model's logits (full forward,
chunked prefill, token-by-token decode, the graph-safe decoding step). On two GPUs the same over
NCCL, the decoding step captured as a CUDA graph (marked ``gpu``)."""

import pytest
import torch

from conftest import ARCHS, small_model, spawn_ranks
from yoco_core.graphs import CUDAGraphDecoder, StaticDecoder
from yoco_core.parallel.tensor import RowParallelLinear, apply_tensor_parallel, tensor_parallel_problem

WORLD = 2
# the biases and per-head norms of the converted families, on top of the small Transformer
CASES = {**{k: {} for k in ARCHS}, "transformer-biases": dict(qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True)}


def rel_err(out, ref) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def check_case(name: str, overrides: dict, rank: int, device: str = "cpu", tol: float = 1e-5) -> list[str]:
    """What differs between this rank's shard and the whole model (empty: nothing)."""
    kind = "transformer" if name == "transformer-biases" else name
    torch.manual_seed(2)                # the biases nn.Linear draws: the same on every rank
    ref = small_model(kind, seed=1, **overrides)
    tp = small_model(kind, seed=1, **overrides)
    tp.load_state_dict(ref.state_dict())
    ref, tp = ref.to(device), apply_tensor_parallel(tp.to(device))
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, ref.config.vocab_size, (2, 37), generator=g).to(device)
    prompt, new = ids[:, :29], ids[:, 29:]
    bad = []

    def expect(what, out, want):
        if out.shape != want.shape or not torch.isfinite(out).all() or rel_err(out, want) > tol:
            bad.append(f"{name} rank {rank} {what}: {rel_err(out, want) if out.shape == want.shape else out.shape}")

    with torch.inference_mode():
        expect("forward", tp(ids), ref(ids))
    last_ref, cache_ref = ref.prefill(prompt, chunk_size=8)
    last_tp, cache_tp = tp.prefill(prompt, chunk_size=8)
    expect("prefill", last_tp, last_ref)
    # each rank's caches hold its half of the KV heads (and of the self-decoder's heads)
    for b_ref, b_tp in zip(cache_ref.buffers(), cache_tp.buffers()):
        if b_tp.k.shape[1] * WORLD != b_ref.k.shape[1]:
            bad.append(f"{name} rank {rank}: KV heads {b_tp.k.shape[1]} of {b_ref.k.shape[1]}")
    for s_ref, s_tp in zip(cache_ref.states, cache_tp.states):
        axis = 1 if s_ref.dim() == 4 else 2          # gRet [B, H, d, d]; SWA's ring [2, B, H, W, d]
        if s_tp.shape[axis] * WORLD != s_ref.shape[axis]:
            bad.append(f"{name} rank {rank}: state heads {tuple(s_tp.shape)} of {tuple(s_ref.shape)}")
    steps_ref, steps_tp = [], []
    for i in range(4):                  # token by token through decode()
        steps_ref.append(ref.decode(new[:, i: i + 1], cache_ref)[0])
        steps_tp.append(tp.decode(new[:, i: i + 1], cache_tp)[0])
    decoder = CUDAGraphDecoder if device.startswith("cuda") else StaticDecoder
    step_ref, step_tp = decoder(ref, cache_ref), decoder(tp, cache_tp)
    for i in range(4, new.shape[1]):    # then the graph-safe decode_step
        steps_ref.append(step_ref(new[:, i: i + 1]))
        steps_tp.append(step_tp(new[:, i: i + 1]))
    expect("decode", torch.cat(steps_tp, 1), torch.cat(steps_ref, 1))
    with torch.inference_mode():        # and the decoded tokens are what the whole forward gives
        expect("decode vs forward", torch.cat(steps_tp, 1), ref(ids)[:, 29:])
    if not any(isinstance(m, RowParallelLinear) for m in tp.modules()):
        bad.append(f"{name}: nothing was sharded")
    return bad


def refusal(rank: int) -> list[str]:
    """A config whose KV heads do not split over the ranks is refused, naming it, untouched."""
    model = small_model("yoco-gret", n_heads=4, n_kv_heads=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        apply_tensor_parallel(model)
    except ValueError as e:
        msg = str(e)
        ok = "\n" not in msg and model.config.name in msg and "n_kv_heads=1" in msg and "n_heads=4" not in msg
        same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return [] if ok and same else [f"rank {rank}: refusal {msg!r}, weights unchanged: {same}"]
    return [f"rank {rank}: 1 KV head was split over {WORLD} ranks"]


def ranks(rank: int, world: int, device: str) -> list[str]:
    bad = refusal(rank)
    for name, overrides in CASES.items():       # on the GPU: Triton kernels, sums in another order
        bad += check_case(name, overrides, rank, device, 1e-5 if device == "cpu" else 1e-4)
    return bad


def test_two_ranks_match_one_process_on_every_path():
    spawn_ranks(ranks, WORLD)


@pytest.mark.gpu
def test_two_gpus_match_one_gpu_with_cuda_graphs():
    if torch.cuda.device_count() < WORLD:
        pytest.skip(f"needs {WORLD} CUDA GPUs")
    spawn_ranks(ranks, WORLD, gpus=True)


@pytest.mark.parametrize("kind, overrides, world, named", [
    ("yoco-gret", {"n_kv_heads": 1}, 2, "n_kv_heads=1"),
    ("yoco-swa", {"n_self_heads": 1}, 2, "n_self_heads=1"),
    ("yoco-gret", {"ffn_dim": 99}, 2, "ffn_dim=99"),
    ("transformer", {}, 4, "n_kv_heads=2"),
])
def test_indivisible_shapes_are_refused_with_one_line(kind, overrides, world, named):
    cfg = ARCHS[kind].replace(**overrides)
    why = tensor_parallel_problem(cfg, world)
    assert why is not None and "\n" not in why and cfg.name in why and named in why, why
    assert "n_heads=4" not in why             # what does divide is not named
    assert tensor_parallel_problem(ARCHS[kind], 2) is None
