"""The SWA self-decoder's ring buffer: every cached path (prefill in one piece or in chunks,
token-by-token and multi-token decoding, the graph-safe ``decode_step``) gives the full forward's
logits, the ring never reads a slot it has not written (unwritten slots hold NaN here), and it
stays where it was allocated, as a CUDA graph over it needs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import SMALL, small_model
from yoco_core import build_model, get_config, load_model
from yoco_core.checkpoint import WEIGHTS_DIR
from yoco_core.graphs import StaticDecoder
from yoco_core.kernels import attention

TOL = dict(rtol=1e-4, atol=1e-4)
W = 8                                   # the window: small, so the tests wrap the ring many times


def _preset_model():
    """The yoco-swa-tiny preset with its shipped weights where they exist (run with window W:
    the window is no weight), else its config at test size with random weights."""
    if (WEIGHTS_DIR / "yoco-swa-tiny" / "config.json").is_file():
        shipped = load_model("yoco-swa-tiny", dtype=torch.float32)
        model = build_model(shipped.config.replace(window=W))
        model.load_state_dict(shipped.state_dict())
        return model
    model = build_model(get_config("yoco-swa-tiny").replace(window=W, **SMALL))
    model.init_weights(std=0.2, generator=torch.Generator().manual_seed(0))
    return model


MODELS = {
    "small": lambda: small_model("yoco-swa", window=W),                 # RoPE cross-decoder, 2 self layers
    "deeper": lambda: small_model("yoco-swa", window=W, n_layers=6),    # 3 self layers
    "preset": _preset_model,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny steps are many times slower with OpenMP threads spinning
    on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=list(MODELS))
def model(request):
    return poisoned(MODELS[request.param]())


def poisoned(model):
    """``model`` whose new caches hold NaN in every ring slot: a slot read before it is written
    makes the logits NaN."""
    make = model.new_cache

    def new_cache(batch, capacity):
        cache = make(batch, capacity)
        for ring in cache.states:
            ring.fill_(float("nan"))
        return cache

    model.new_cache = new_cache
    return model


def _ids(B, T, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prompt", [3, W, 13])
def test_prefill_then_token_by_token_decode_equals_full_forward(model, prompt):
    """Prompts shorter than, equal to and longer than the window, then decoding across several
    wrap-arounds of the ring."""
    T = prompt + 3 * W
    ids = _ids(2, T)
    full = model(ids)
    last, cache = model.prefill(ids[:, :prompt])
    torch.testing.assert_close(last, full[:, prompt - 1], **TOL)
    if prompt < W:                   # the poison is really there, past the written slots
        assert all(torch.isnan(r[:, :, :, prompt:]).all() and torch.isfinite(r[:, :, :, :prompt]).all()
                   for r in cache.states)
    steps = [model.decode(ids[:, t:t + 1], cache)[0] for t in range(prompt, T)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, prompt:], **TOL)
    assert cache.length == T and all(torch.isfinite(r).all() for r in cache.states)


@pytest.mark.parametrize("chunk", [1, 3, 5, W, 11, 29])
def test_chunked_prefill_equals_unchunked(model, chunk):
    """Chunks smaller and larger than the window, and boundaries not aligned with it: same
    logits, same ring (slot for slot), and the caches continue identically."""
    ids = _ids(2, 29)
    ref, ref_cache = model.prefill(ids)
    got, cache = model.prefill(ids, chunk_size=chunk)
    torch.testing.assert_close(got, ref, **TOL)
    for r, rr in zip(cache.states, ref_cache.states):
        torch.testing.assert_close(r, rr, **TOL)
    nxt = _ids(2, 3, seed=5)
    torch.testing.assert_close(model.decode(nxt, cache)[0], model.decode(nxt, ref_cache)[0], **TOL)


def test_short_chunks_never_read_unwritten_slots(model):
    """A prompt shorter than the window in chunks of 2: each chunk gathers only the slots its
    predecessors wrote."""
    ids = _ids(1, W - 2)
    ref = model(ids)[:, -1]
    got, cache = model.prefill(ids, chunk_size=2)
    torch.testing.assert_close(got, ref, **TOL)
    assert all(torch.isnan(r[:, :, :, W - 2:]).all() for r in cache.states)


def test_multi_token_decode_equals_full_forward(model):
    ids = _ids(2, 5 + 3 * 9)
    full = model(ids)
    _, cache = model.prefill(ids[:, :5])
    for s in range(5, ids.shape[1], 3):
        logits, cache = model.decode(ids[:, s:s + 3], cache)
        torch.testing.assert_close(logits, full[:, s:s + 3], **TOL)


def test_static_decoder_equals_full_forward_and_keeps_the_rings_in_place(model):
    """The graph-safe step run eagerly, over 3 x window steps from a prompt shorter than the
    window: the full forward's logits, and every ring at the address it was allocated at."""
    prompt, T = 3, 3 + 3 * W
    ids = _ids(2, T)
    full = model(ids)
    _, cache = model.prefill(ids[:, :prompt], reserve=3 * W)
    rings = [(r, r.data_ptr()) for r in cache.states]
    step = StaticDecoder(model, cache)
    out = [step(ids[:, t:t + 1]) for t in range(prompt, T)]
    torch.testing.assert_close(torch.cat(out, 1), full[:, prompt:], **TOL)
    assert [(r, r.data_ptr()) for r in cache.states] == rings
    assert cache.length == T


def test_decode_step_is_the_same_work_at_every_position_and_never_reads_a_device_value(monkeypatch):
    """What a CUDA graph replays: the ops of ``decode_step`` and their shapes do not depend on
    the position, nothing reads a device value back to the host (``.item()``, ``int(t)``), and
    the ring is attended with the split-KV decode path over a device length ``min(at + 1, W)``.
    The decode attention itself (on the CPU its reference, which slices by the length) is left
    out: on CUDA it is the Triton kernel, which reads the length on the device."""
    model = small_model("yoco-swa", window=W)
    _, cache = model.prefill(_ids(1, 2), reserve=4 * W)
    rec, real, ring_lengths = OpRecorder(), attention.decode_attention, []

    def decode_attention(q, k, v, length, **kw):
        if k.shape[2] == W:                      # a ring (the global KV has room for 4 W)
            ring_lengths.append(length)
        with rec.paused():
            return real(q, k, v, length, **kw)

    monkeypatch.setattr(attention, "decode_attention", decode_attention)
    positions, traces = range(2, 3 + 2 * W), []
    for pos in positions:
        rec.ops = []
        with torch.inference_mode(), rec:
            model.decode_step(_ids(1, 1, seed=pos), cache, torch.tensor([pos]))
        cache.advance(1)
        traces.append(rec.ops)
    assert traces[0] and all(t == traces[0] for t in traces)
    host_reads = {"item", "_local_scalar_dense", "is_nonzero"}      # .item(), int(t), bool(t)
    assert not [op for op, _ in traces[0] if op.split(".")[1] in host_reads]
    assert all(isinstance(n, torch.Tensor) for n in ring_lengths)
    per_step = len(model.self_layers)
    assert [int(n) for n in ring_lengths[::per_step]] == [min(p + 1, W) for p in positions]


class OpRecorder(TorchDispatchMode):
    """Records (op name, argument shapes) of every aten op run inside it, except while paused."""

    def __init__(self):
        super().__init__()
        self.ops, self._paused = [], False

    def paused(self):
        rec = self

        class _Pause:
            def __enter__(self):
                rec._paused = True

            def __exit__(self, *exc):
                rec._paused = False
        return _Pause()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._paused:
            shapes = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
            self.ops.append((str(func), shapes))
        return func(*args, **(kwargs or {}))


def test_ring_state_is_preallocated_and_constant_in_context_length():
    """The ring exists as soon as the cache does, its bytes are the window's whatever the
    context, and prefill, eager decoding and the static step all write into it in place."""
    model = small_model("yoco-swa", window=W)
    cfg = model.config
    cache = model.new_cache(2, 64)
    rings = [(r, r.data_ptr()) for r in cache.states]
    assert all(r.shape == (2, 2, cfg.n_self_heads, W, cfg.self_head_dim) for r, _ in rings)
    want = len(model.self_layers) * 2 * 2 * W * cfg.dim * 4
    assert cache.state_nbytes() == want
    ids = _ids(2, 40)
    with torch.inference_mode():
        for s, e in ((0, 3), (3, 20), (20, 21), (21, 24)):      # chunks, then one and three tokens
            model._run(ids[:, s:e], cache, "all")
    StaticDecoder(model, cache)(ids[:, 24:25])
    assert [(r, r.data_ptr()) for r in cache.states] == rings
    for T in (3, W, 50):
        assert model.prefill(_ids(1, T))[1].state_nbytes() == want // 2


@pytest.mark.parametrize("ctx", [5, 3 * W + 2])
def test_fill_random_leaves_the_ring_as_ctx_tokens_would(ctx):
    """Random keys in the slots of the last ``min(ctx, W)`` positions, zeros in the rest, written
    into the preallocated ring (same address); decoding from it is finite."""
    model = small_model("yoco-swa", window=W)
    cache = model.new_cache(2, ctx + 4)
    rings = [(r, r.data_ptr()) for r in cache.states]
    cache.fill_random(ctx, torch.Generator().manual_seed(0))
    assert [(r, r.data_ptr()) for r in cache.states] == rings
    filled = min(ctx, W)
    for r, _ in rings:
        assert r[:, :, :, :filled].std() > 0.5 and (r[:, :, :, filled:] == 0).all()
    logits, _ = model.decode(torch.zeros(2, 1, dtype=torch.long), cache)
    assert torch.isfinite(logits).all() and cache.length == ctx + 1


INTERPRETED_STEPS = r"""
import sys, torch
sys.path.insert(0, "tests")
from conftest import small_model
import yoco_core.kernels.decode_attention as da
from yoco_core.graphs import StaticDecoder
calls, real = [], da.decode_attention_triton
da.decode_attention_triton = lambda *a, **k: calls.append(a[1].shape[2]) or real(*a, **k)
torch.set_num_threads(1)
W = 4
model = small_model("yoco-swa", window=W, n_layers=2)
ids = torch.randint(0, 256, (2, 2 + 2 * W + 1), generator=torch.Generator().manual_seed(1))
full = model(ids)
_, cache = model.prefill(ids[:, :2], reserve=2 * W + 1)
with torch.inference_mode():
    for ring in cache.states:
        ring[:, :, :, 2:] = float("nan")        # the slots the prompt did not write
step = StaticDecoder(model, cache)
out = torch.cat([step(ids[:, t:t + 1]) for t in range(2, ids.shape[1])], 1)
torch.testing.assert_close(out, full[:, 2:], rtol=1e-4, atol=1e-4)
assert calls.count(W) == ids.shape[1] - 2, calls     # the ring went through the Triton kernel
print("ok")
"""


def test_the_ring_through_the_split_kv_triton_kernel_interpreted():
    """The graph-safe step with the split-KV Triton kernel (in triton's interpreter) attending
    the ring (a view of the ``[2, ...]`` state, a device length, NaN in unwritten slots): the full
    forward's logits. On CUDA this kernel is what the step runs."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "YOCO_KERNEL_DECODE": "triton", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", INTERPRETED_STEPS], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-3000:] + r.stderr[-3000:]
