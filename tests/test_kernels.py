"""Each kernel against its reference, on random inputs (never zeros), float32.

Tolerance: max abs error 1e-4 relative to the output's scale for the float32 PyTorch forms."""
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_scaled as _close
from yoco_core.kernels.attention import attend, attention_ref, sliding_window_attend
from yoco_core.kernels.gret import gated_retention, gret_chunk, gret_parallel_ref, gret_recurrent_ref, gret_step


def _gret_inputs(B, T, H, K, V, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    gate = F.logsigmoid(torch.randn(B, T, H, generator=g) * 3) / 4   # a wide spread of decays
    s0 = torch.randn(B, H, K, V, generator=g)
    return q, k, v, gate, s0


@pytest.mark.parametrize("T,chunk", [(1, 64), (5, 4), (37, 8), (64, 64), (130, 32)])
@pytest.mark.parametrize("with_state", [False, True])
def test_gret_chunk_equals_recurrent_equals_parallel(T, chunk, with_state):
    q, k, v, g, s0 = _gret_inputs(2, T, 3, 8, 16, seed=T)
    s0 = s0 if with_state else None
    o_rec, s_rec = gret_recurrent_ref(q, k, v, g, 0.35, s0)
    o_par, s_par = gret_parallel_ref(q, k, v, g, 0.35, s0)
    o_chk, s_chk = gret_chunk(q, k, v, g, 0.35, s0, chunk_size=chunk)
    for o, s in ((o_par, s_par), (o_chk, s_chk)):
        _close(o, o_rec)
        _close(s, s_rec)


def test_gret_step_and_dispatch_follow_the_recurrence():
    q, k, v, g, s0 = _gret_inputs(2, 6, 2, 8, 8, seed=3)
    ref, ref_state = gret_recurrent_ref(q, k, v, g, 0.5, s0)
    state, outs = s0, []
    for t in range(6):
        o, state = gret_step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], g[:, t:t + 1], 0.5, state)
        outs.append(o)
    _close(torch.cat(outs, 1), ref)
    _close(state, ref_state)
    o, s = gated_retention(q, k, v, g, 0.5, s0)
    _close(o, ref)
    _close(s, ref_state)


def _attn_inputs(B, H, Hkv, n, L, D, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, n, D, generator=g), torch.randn(B, Hkv, L, D, generator=g),
            torch.randn(B, Hkv, L, D, generator=g))


@pytest.mark.parametrize("n,L", [(1, 1), (1, 50), (50, 50), (7, 50), (33, 34)])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)])
def test_attend_is_bottom_right_causal(n, L, H, Hkv):
    q, k, v = _attn_inputs(2, H, Hkv, n, L, 16, seed=n * 100 + L)
    _close(attend(q, k, v), attention_ref(q, k, v))


@pytest.mark.parametrize("n,L,window,block", [(50, 50, 8, 16), (10, 60, 16, 4), (1, 40, 8, 1024),
                                              (64, 64, 64, 32), (64, 64, 100, 16)])
def test_sliding_window_attend(n, L, window, block):
    q, k, v = _attn_inputs(1, 4, 2, n, L, 8, seed=window + n)
    _close(sliding_window_attend(q, k, v, window, block=block), attention_ref(q, k, v, window=window))


@pytest.mark.parametrize("B,n,L,window,H,Hkv,scale", [
    (1, 64, 64, 16, 4, 2, None),     # a fresh prefill: the first block has no keys before it
    (2, 70, 70, 16, 4, 4, 0.3),      # batch rows, a partial last block
    (1, 64, 79, 16, 2, 1, None),     # a later chunk with exactly window - 1 keys before it
    (1, 48, 200, 16, 6, 2, None),    # a later chunk with more keys before it than it sees
    (1, 64, 64, 2, 2, 2, None),      # the smallest window
    (1, 30, 40, 16, 2, 2, None),     # 10 keys before: fewer than window - 1, the masked blocks
    (1, 9, 9, 16, 2, 2, None)])      # shorter than a window
def test_band_attention_is_sliding_window_attention(B, n, L, window, H, Hkv, scale):
    """The GPU's sliding-window prefill (whole windows of queries as the batch of two causal calls,
    one of them mirrored, merged by log-sum-exp) on its CPU path equals the float64 reference."""
    from yoco_core.kernels.attention import band_attention

    q, k, v = _attn_inputs(B, H, Hkv, n, L, 8, seed=n + L + window)
    ref = attention_ref(q, k, v, window=window, scale=scale)
    _close(band_attention(q, k, v, window, scale=scale), ref)
    if L > window:       # the window bites: full causal attention differs
        assert (ref - attention_ref(q, k, v, scale=scale)).abs().max() > 1e-3


@pytest.mark.parametrize("n,L", [(1, 40), (40, 40), (9, 40)])
@pytest.mark.parametrize("scale,window,softcap", [(0.2, 0, 0.0), (None, 6, 0.0), (0.3, 0, 4.0), (None, 7, 3.0)])
def test_attend_scale_window_softcap(n, L, scale, window, softcap):
    """The converted families' attention options (Gemma's query_pre_attn_scalar and soft-capping,
    Mistral's window) through the one entry point, prefill chunks and single queries alike."""
    q, k, v = _attn_inputs(2, 4, 2, n, L, 16, seed=n + window)
    got = attend(q, k, v, scale=scale, window=window, softcap=softcap)
    _close(got, attention_ref(q, k, v, window=window or None, scale=scale, softcap=softcap))
    if softcap:          # the cap matters here: without it the result differs
        assert (got - attend(q, k, v, scale=scale, window=window)).abs().max() > 1e-3


@pytest.mark.parametrize("n,chunk,H,Hkv", [(37, 10, 4, 2), (64, 16, 3, 3), (50, 64, 4, 1)])
def test_causal_attention_split_equals_one_causal_call(n, chunk, H, Hkv):
    """The CPU path of the chunked causal attention (its partials in float32 with their
    log-sum-exp, merged) equals the float64 reference; the GPU runs the same logic on cuDNN."""
    from yoco_core.kernels.attention import causal_attention_split, merge_partials, partial_attention

    g = torch.Generator().manual_seed(n)
    q = torch.randn(2, H, n, 16, generator=g)
    k, v = torch.randn(2, Hkv, n, 16, generator=g) * 1.5, torch.randn(2, Hkv, n, 16, generator=g)
    _close(causal_attention_split(q, k, v, chunk), attention_ref(q, k, v))
    # merging is what makes it right: a chunk's causal part alone is not the answer
    o, lse = partial_attention(q[:, :, -5:], k[:, :, -5:], v[:, :, -5:], causal=True)
    assert (o - attention_ref(q, k, v)[:, :, -5:]).abs().max() > 1e-2
    o1, l1 = partial_attention(q[:, :, -5:], k[:, :, :-5], v[:, :, :-5], causal=False)
    _close(merge_partials(o1, l1, o, lse), attention_ref(q, k, v)[:, :, -5:])


@pytest.mark.parametrize("n,L,scale", [(7, 50, None), (50, 50, None), (1, 9, 0.3), (20, 64, 0.2)])
def test_causal_with_prefix_is_a_chunk_of_causal_attention(n, L, scale):
    """A prefill chunk's attention on the GPU (the last n queries over L keys, as two partials
    merged), on its CPU path, equals the float64 reference, a logit scale included."""
    from yoco_core.kernels.attention import causal_with_prefix

    q, k, v = _attn_inputs(2, 4, 2, n, L, 16, seed=n * 7 + L)
    _close(causal_with_prefix(q, k, v, scale), attention_ref(q, k, v, scale=scale))


# -- the backend selector ----------------------------------------------------------------------------
def test_backend_variables_are_checked_with_one_line_naming_the_variable():
    from yoco_core.kernels import backend

    assert backend.read_env({}) == {"fused": "auto", "decode": "auto", "gret": "auto"}
    assert backend.read_env({"YOCO_KERNEL_GRET": "FLA", "YOCO_KERNEL_FUSED": "torch"}) == \
        {"fused": "torch", "decode": "auto", "gret": "fla"}
    with pytest.raises(backend.SettingError, match=r"^YOCO_KERNEL_DECODE='fla': use auto, torch or triton$"):
        backend.read_env({"YOCO_KERNEL_DECODE": "fla"})
    with pytest.raises(backend.SettingError, match=r"^unknown kernel variable YOCO_KERNEL_GERT \(known: "):
        backend.read_env({"YOCO_KERNEL_GERT": "torch"})
    for old, new in backend.RENAMED.items():   # the old names are refused, not silently ignored
        with pytest.raises(backend.SettingError, match=rf"^{old} was renamed {new}$"):
            backend.read_env({old: "torch"})


def test_backend_override_nests_and_restores():
    from yoco_core.kernels import backend

    before = {f: backend.chosen(f) for f in backend.FAST}
    with backend.override(gret="torch", fused="torch"):
        assert backend.chosen("gret") == "torch" and backend.chosen("fused") == "torch"
        with backend.override(fused="triton", gret=None):
            assert backend.chosen("fused") == "triton" and backend.chosen("gret") == "torch"
        assert backend.chosen("fused") == "torch"
        with pytest.raises(RuntimeError), backend.override(decode="torch"):
            raise RuntimeError                     # an exception inside still restores
        assert backend.chosen("decode") == before["decode"]
    assert {f: backend.chosen(f) for f in backend.FAST} == before
    with pytest.raises(backend.SettingError, match=r"^gret='triton': use auto, torch or fla$"):
        with backend.override(gret="triton"):
            pass
    with pytest.raises(backend.SettingError, match=r"^unknown kernel family 'gert'"):
        with backend.override(gert="torch"):
            pass


def test_backend_rule_on_the_cpu():
    """CPU tensors run the PyTorch forms unless triton is asked for under TRITON_INTERPRET=1; a
    tensor needing a gradient never takes our Triton kernels; torch asked for always wins."""
    from yoco_core.kernels import backend

    x, w = torch.ones(2), torch.ones(2, requires_grad=True)
    for family in backend.FAST:
        assert backend.select(family, x, want="auto") == "torch"
        assert backend.select(family, x, want="torch", available=lambda: True) == "torch"
    interpreted = "triton" if backend.INTERPRET else "torch"
    assert backend.select("fused", x, want="triton") == interpreted
    assert backend.select("decode", x, want="triton") == interpreted
    assert backend.select("fused", x, w, want="triton") == "torch"
    with torch.no_grad():
        assert backend.select("fused", x, w, want="triton") == interpreted
    assert backend.select("gret", x, want="fla", available=lambda: True) == "torch"
    with backend.override(decode="triton"):
        assert backend.select("decode", x) == interpreted
        assert backend.select("decode", x, want="torch") == "torch"


def test_backend_records_a_refusal_per_device():
    from yoco_core.kernels import backend

    dev = torch.device("cuda:7")                  # only recorded, never touched
    assert not backend.refused("test_capability", dev)
    backend.refuse("test_capability", dev)
    assert backend.refused("test_capability", dev)
    assert not backend.refused("test_capability", torch.device("cuda:6"))


def test_fla_gated_retention_goes_through_in_batch_slices_below_its_index_limit(monkeypatch):
    """fla-core indexes with 32-bit offsets: a batch whose tensors reach FLA_MAX_ELEMENTS goes to
    it in slices (each below the limit), and the result is the whole batch's, state included."""
    from yoco_core.kernels import gret

    calls = []

    def fake_fla(q, k, v, g, scale, initial_state, output_final_state):
        assert q.numel() <= gret.FLA_MAX_ELEMENTS and v.numel() <= gret.FLA_MAX_ELEMENTS
        calls.append(q.shape[0])
        return gret_chunk(q, k, v, g, scale, initial_state)

    monkeypatch.setattr(gret, "_fla_chunk", lambda: fake_fla)
    monkeypatch.setattr(gret, "backend_for", lambda x: "fla")
    q, k, v, g, s0 = _gret_inputs(7, 12, 2, 8, 16, seed=5)
    monkeypatch.setattr(gret, "FLA_MAX_ELEMENTS", 2 * 12 * 2 * 16)      # two rows of v per call
    o, s = gated_retention(q, k, v, g, 0.4, s0)
    assert calls == [2, 2, 2, 1]
    monkeypatch.setattr(gret, "FLA_CHUNK", 4)         # then a row's chunk states, 3 x 2 x 8 x 16, are more
    calls.clear()
    gated_retention(q, k, v, g, 0.4, s0)
    assert calls == [1] * 7
    ref_o, ref_s = gret_recurrent_ref(q, k, v, g, 0.4, s0)
    _close(o, ref_o)
    _close(s, ref_s)
