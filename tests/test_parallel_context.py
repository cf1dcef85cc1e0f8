"""Context parallel prefill (``yoco_core.parallel.context``): three gloo processes on the CPU,
each prefilling its piece of the prompt, give the one-process prefill's last logits; YOCO's cache
(gRet and SWA, pieces shorter and longer than the window) then decodes as the one-process cache
does, and the Transformer's ring attention gives the same last logits. On two GPUs the same over
NCCL, decoding through the CUDA graph (marked ``gpu``)."""

import pytest
import torch

from conftest import small_model, spawn_ranks
from yoco_core.graphs import CUDAGraphDecoder, StaticDecoder
from yoco_core.kernels.gret import gated_retention
from yoco_core.parallel.context import RingShard, context_parallel_prefill, pieces

WORLD = 3
# (model, prompt length): 29 tokens over 3 ranks are pieces of 10, 10, 9, shorter than the SWA
# window of 16 (the keys before a piece come from two ranks back); 52 are pieces longer than it
# (a batch of 2, and of 1, where a [1, 1, d] slice is already contiguous: a broadcast into it once
# overwrote a rank's own hidden state)
CASES = [("yoco-gret", 29, 2), ("yoco-nope", 29, 2), ("yoco-swa", 29, 2), ("yoco-swa", 52, 2), ("yoco-swa", 5, 2),
         ("transformer", 29, 2), ("transformer", 52, 2), ("yoco-gret", 29, 1), ("yoco-swa", 52, 1),
         ("transformer", 29, 1)]
NEW = 5


def rel_err(out, ref) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def check_case(kind: str, T: int, B: int, rank: int, world: int = WORLD, device: str = "cpu",
               tol: float = 1e-5) -> list[str]:
    """What differs between the context-parallel prefill and the one-process one (empty: nothing)."""
    model = small_model(kind, seed=1).to(device)
    g = torch.Generator().manual_seed(T)
    ids = torch.randint(0, model.config.vocab_size, (B, T + NEW), generator=g).to(device)
    prompt, new = ids[:, :T], ids[:, T:]
    bad = []

    def expect(what, out, want):
        if out.shape != want.shape or not torch.isfinite(out).all() or rel_err(out, want) > tol:
            err = rel_err(out, want) if out.shape == want.shape else out.shape
            bad.append(f"{kind} T={T} B={B} rank {rank} {what}: {err}")

    last_ref, cache_ref = model.prefill(prompt)
    last, cache = context_parallel_prefill(model, prompt)
    expect("last logits", last, last_ref)
    if kind == "transformer":
        start, n = pieces(T, world)[rank]
        if not isinstance(cache, RingShard) or cache.start != start or cache.layers[0][0].shape[2] != n:
            bad.append(f"{kind} rank {rank}: shard {type(cache).__name__} not its piece {start}, {n}")
        for (k, v), buf in zip(cache.layers, cache_ref.layers):     # the shard holds its piece's KV
            expect("KV shard", torch.stack((k, v)), torch.stack(buf.view())[:, :, :, start: start + n])
        try:
            model.decode(new[:, :1], cache)
            bad.append(f"{kind} rank {rank}: decoded from a shard")
        except ValueError as e:
            if "\n" in str(e) or "not supported" not in str(e):
                bad.append(f"{kind} rank {rank}: refusal {e!r}")
        return bad
    if cache.length != T or cache.capacity != cache_ref.capacity:
        bad.append(f"{kind} rank {rank}: cache length {cache.length}, capacity {cache.capacity}")
    expect("global KV", torch.stack(cache.kv.view()), torch.stack(cache_ref.kv.view()))
    if kind == "yoco-swa":            # the ring's filled slots (the others are never read)
        filled = torch.arange(max(0, T - model.config.window), T) % model.config.window
        states = [s[:, :, :, filled] for s in cache.states]
        states_ref = [s[:, :, :, filled] for s in cache_ref.states]
    else:
        states, states_ref = cache.states, cache_ref.states
    expect("self-decoder states", torch.stack(states), torch.stack(states_ref))
    steps, steps_ref = [], []
    for i in range(3):                  # token by token through decode(), then the graph-safe step
        steps.append(model.decode(new[:, i: i + 1], cache)[0])
        steps_ref.append(model.decode(new[:, i: i + 1], cache_ref)[0])
    decoder = CUDAGraphDecoder if device.startswith("cuda") else StaticDecoder
    step, step_ref = decoder(model, cache), decoder(model, cache_ref)
    for i in range(3, NEW):           # (a graph's logits live in a buffer the next step overwrites)
        steps.append(step(new[:, i: i + 1]).clone())
        steps_ref.append(step_ref(new[:, i: i + 1]).clone())
    expect("decode", torch.cat(steps, 1), torch.cat(steps_ref, 1))
    with torch.inference_mode():
        expect("decode vs forward", torch.cat(steps, 1), model(ids)[:, T:])
    return bad


def refusals(rank: int) -> list[str]:
    """Fewer tokens than ranks, and a soft-capped Transformer, are refused with one line."""
    bad = []
    for model, ids, word in [(small_model("yoco-gret"), torch.zeros(1, WORLD - 1, dtype=torch.long), "per rank"),
                             (small_model("transformer", attn_softcap=50.0), torch.zeros(1, 8, dtype=torch.long),
                              "soft-capped")]:
        try:
            context_parallel_prefill(model, ids)
            bad.append(f"rank {rank}: {word} case was not refused")
        except ValueError as e:
            if "\n" in str(e) or word not in str(e):
                bad.append(f"rank {rank}: refusal {e!r}")
    return bad


def ranks(rank: int, world: int, device: str) -> list[str]:
    bad = refusals(rank)
    for kind, T, B in CASES:     # on the GPU: fla-core's gRet, cuDNN attention, sums in another order
        bad += check_case(kind, T, B, rank, world, device, 1e-5 if device == "cpu" else 1e-4)
    return bad


def test_three_ranks_prefill_as_one_process_and_decode_on():
    spawn_ranks(ranks, WORLD)


@pytest.mark.gpu
def test_two_gpus_prefill_as_one_gpu_and_decode_with_cuda_graphs():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    spawn_ranks(ranks, 2, gpus=True)


def test_pieces_cover_the_prompt_in_order():
    for T, world in [(29, 3), (3, 3), (64, 4), (7, 1)]:
        parts = pieces(T, world)
        assert [s for s, _ in parts] == [sum(n for _, n in parts[:r]) for r in range(world)]
        assert sum(n for _, n in parts) == T and max(n for _, n in parts) - min(n for _, n in parts) <= 1


def test_gated_retention_is_linear_in_its_initial_state():
    """What the state chain relies on: from ``S``, the outputs are those from a zero state plus
    those of zero keys from ``S``, and the final state is ``S_0 + exp(sum g) S``."""
    g = torch.Generator().manual_seed(0)
    B, T, H, K = 2, 70, 3, 8                 # over one chunk of the chunkwise form
    q, k, v = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
    decay = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g)) / 4
    S = torch.randn(B, H, K, K, generator=g)
    o, state = gated_retention(q, k, v, decay, K ** -0.5, S)
    o0, state0 = gated_retention(q, k, v, decay, K ** -0.5, None)
    do, dstate = gated_retention(q, torch.zeros_like(k), v, decay, K ** -0.5, S)
    torch.testing.assert_close(o0 + do, o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dstate, decay.sum(1).exp()[..., None, None] * S, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state0 + dstate, state, rtol=1e-5, atol=1e-5)
    assert (o0 - o).abs().max() > 1e-2          # the initial state does change the outputs


def test_the_benchmark_script_runs_two_cpu_ranks_and_checks_yoco_against_one_process(tmp_path):
    """scripts/bench_context_parallel.py --smoke under torchrun: a row per arch and length, YOCO's
    context-parallel last logits equal to one process's (its --check)."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(root / "scripts" / "bench_context_parallel.py"), "--smoke", "--out", str(tmp_path)],
                       cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "cp.csv").open()))
    assert [(x["arch"], x["ctx"], x["gpus"], x["parallel"], x["status"]) for x in rows] == [
        (a, c, "2", "cp2", "ok") for a in ("transformer", "yoco") for c in ("256", "512")]
    assert all(float(x["prefill_s"]) > 0 for x in rows)
    assert all(float(x["check_rel_err"]) < 1e-4 for x in rows if x["arch"] == "yoco")
