"""The cached paths (prefill, chunked prefill, decode) give the full forward's logits; configs are checked when made."""
import json

import pytest
import torch

from conftest import small_model
from yoco_core import YOCOCache, build_model, get_config
from yoco_core.config import ModelConfig

TOL = dict(rtol=1e-4, atol=1e-4)


def _ids(B, T, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_logits_are_not_trivial(arch):
    full = small_model(arch)(_ids(2, 40))
    assert full.std() > 0.5 and torch.isfinite(full).all()


def test_prefill_then_token_by_token_decode_equals_full_forward(arch):
    model = small_model(arch)
    ids = _ids(2, 70)
    full = model(ids)
    last, cache = model.prefill(ids[:, :33])
    torch.testing.assert_close(last, full[:, 32], **TOL)
    steps = []
    for t in range(33, 70):
        logits, cache = model.decode(ids[:, t:t + 1], cache)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 33:70], **TOL)
    assert cache.length == 70


def test_multi_token_decode_equals_full_forward(arch):
    model = small_model(arch)
    ids = _ids(1, 60)
    full = model(ids)
    _, cache = model.prefill(ids[:, :20])
    logits, cache = model.decode(ids[:, 20:45], cache)
    torch.testing.assert_close(logits, full[:, 20:45], **TOL)
    logits, cache = model.decode(ids[:, 45:60], cache)
    torch.testing.assert_close(logits, full[:, 45:60], **TOL)


@pytest.mark.parametrize("chunk", [1, 7, 16, 50])
def test_chunked_prefill_equals_unchunked(arch, chunk):
    model = small_model(arch)
    ids = _ids(2, 50)
    ref, ref_cache = model.prefill(ids)
    got, cache = model.prefill(ids, chunk_size=chunk)
    torch.testing.assert_close(got, ref, **TOL)
    # and the caches continue identically
    nxt = _ids(2, 3, seed=5)
    torch.testing.assert_close(model.decode(nxt, cache)[0], model.decode(nxt, ref_cache)[0], **TOL)


def test_early_exit_prefill_matches_running_every_layer():
    """YOCO's prefill skips the cross-decoder for all but the last position; the logits must be
    those of the full forward, which runs every layer at every position."""
    model = small_model("yoco-gret")
    ids = _ids(3, 45)
    calls = []
    for layer in model.cross_layers:
        layer.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[1]))
    last, _ = model.prefill(ids, chunk_size=10)
    assert calls == [1] * len(model.cross_layers), "cross-decoder must run for the last position only"
    torch.testing.assert_close(last, model(ids)[:, -1], **TOL)


def test_decode_past_the_reserved_capacity_grows_the_cache(arch):
    model = small_model(arch)
    ids = _ids(1, 30)
    full = model(ids)
    _, cache = model.prefill(ids[:, :10], reserve=2)
    out = [model.decode(ids[:, t:t + 1], cache)[0] for t in range(10, 30)]
    torch.testing.assert_close(torch.cat(out, 1), full[:, 10:30], **TOL)


def test_longer_than_max_seq_len_is_refused(arch):
    model = small_model(arch, max_seq_len=32)
    with pytest.raises(ValueError, match="exceed"):
        model.prefill(_ids(1, 33))
    _, cache = model.prefill(_ids(1, 32))
    with pytest.raises(ValueError, match="exceed"):
        model.decode(_ids(1, 1), cache)


def _cache_bytes(name, n_layers, T, **overrides):
    cfg = get_config(name).replace(n_layers=n_layers, **overrides)
    model = build_model(cfg)
    _, cache = model.prefill(_ids(1, T), reserve=0)
    return cache


def test_yoco_kv_cache_does_not_grow_with_depth_but_transformer_does():
    y2, y8 = _cache_bytes("yoco-tiny", 2, 64), _cache_bytes("yoco-tiny", 8, 64)
    assert isinstance(y2, YOCOCache)
    assert y2.kv_nbytes() == y8.kv_nbytes() > 0
    t2, t8 = _cache_bytes("transformer-tiny", 2, 64), _cache_bytes("transformer-tiny", 8, 64)
    assert t8.kv_nbytes() == 4 * t2.kv_nbytes()
    assert y8.kv_nbytes() * 8 == t8.kv_nbytes()   # one KV for the model vs one per layer


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny"])
def test_yoco_self_decoder_state_is_constant_in_context_length(name):
    short, long = (_cache_bytes(name, 4, T, window=32) for T in (40, 160))
    assert short.state_nbytes() == long.state_nbytes() > 0
    assert long.kv_nbytes() == 4 * short.kv_nbytes()


def test_presets_and_parameter_counts():
    for name in ("yoco-tiny", "yoco-swa-tiny", "transformer-tiny"):
        cfg = get_config(name)
        model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
        assert 1e6 < cfg.n_params() < 2e7
    for size in ("160m", "400m", "830m", "1.4b", "3b", "13b"):
        y, t = get_config(f"yoco-{size}"), get_config(f"transformer-{size}")
        for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
            assert getattr(y, f) == getattr(t, f)
        meta = build_model(y, device="meta")
        assert sum(p.numel() for p in meta.parameters()) == y.n_params()
    full = get_config("transformer-tiny").replace(   # every converted-family option that adds weights
        head_size=48, qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True, post_norms=True, tie_embeddings=True)
    assert sum(p.numel() for p in build_model(full).parameters()) == full.n_params()
    y3 = get_config("yoco-3b")
    assert (y3.dim, y3.n_layers, y3.n_heads, y3.n_kv_heads, y3.ffn_dim) == (3072, 26, 24, 8, 8192)
    assert 3.3e9 < y3.n_params() < 3.6e9
    with pytest.raises(KeyError, match="did you mean"):
        get_config("yoco-3bb")


@pytest.mark.parametrize("kind", ["yoco-gret", "transformer"])
def test_graph_safe_decode_step_equals_full_forward(kind):
    """The step a CUDA graph captures (device position, in-place KV write, attention over the
    whole buffer up to the position with the decode kernel's reference) gives the full forward's
    logits; on the CPU it runs eagerly, the same code."""
    from yoco_core.graphs import StaticDecoder

    model = small_model(kind)
    ids = _ids(2, 40)
    full = model(ids)
    _, cache = model.prefill(ids[:, :25], reserve=20)
    step = StaticDecoder(model, cache)
    out = [step(ids[:, t:t + 1]) for t in range(25, 40)]
    torch.testing.assert_close(torch.cat(out, 1), full[:, 25:40], **TOL)
    assert cache.length == 40
    # positions past the fill are never read: poison them and decode once more
    with torch.inference_mode():
        for buf in cache.buffers():
            buf.k[:, :, 41:] = float("nan")
    assert torch.isfinite(step(ids[:, :1])).all()
    with pytest.raises(ValueError, match="cache is full"):
        for _ in range(10):
            step(ids[:, :1])


def test_static_decoder_refuses_a_cache_advanced_behind_its_back():
    from yoco_core.graphs import StaticDecoder

    model = small_model("yoco-gret")
    ids = _ids(1, 30)
    _, cache = model.prefill(ids[:, :20], reserve=8)
    step = StaticDecoder(model, cache)
    step(ids[:, 20:21])
    model.decode(ids[:, 21:22], cache)          # the eager path moves the cache, not the decoder
    with pytest.raises(RuntimeError, match="outside this decoder"):
        step(ids[:, 22:23])


def test_graph_decoding_only_for_head_sizes_the_kernel_takes():
    from yoco_core.graphs import graph_capable

    assert graph_capable(small_model("yoco-gret"))                      # head dim 16
    assert graph_capable(small_model("transformer"))
    assert graph_capable(small_model("yoco-swa"))                       # the ring, written in place
    assert not graph_capable(small_model("yoco-swa", n_self_heads=8))   # self heads of 64 / 8 = 8
    assert not graph_capable(small_model("transformer", dim=96, n_heads=4, n_kv_heads=2))  # 24


@pytest.mark.parametrize("overrides,match", [
    (dict(n_heads=0), "positive integer"),
    (dict(n_kv_heads=0), "positive integer"),
    (dict(window=1, self_decoder="swa"), "window"),
    (dict(dim=96, n_heads=4, n_self_heads=32), "even"),
    (dict(rope_scaling={"rope_type": "llama3"}), "rope_scaling"),
    (dict(tokenizer="foo"), "tokenizer"),
])
def test_bad_configs_are_refused_when_made(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_config("yoco-tiny").replace(**overrides)


def test_negative_chunk_size_is_refused():
    with pytest.raises(ValueError, match="chunk_size"):
        small_model("yoco-gret").prefill(_ids(1, 10), chunk_size=-4)


def test_add_linear_adds_into_the_residual_stream_without_gradients():
    """Inference: the projection is added into ``x`` itself (no new tensor), equal to the plain
    sum; training: a new tensor, and gradients reach ``x``, the input and the weight."""
    from yoco_core.model import add_linear

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(12, 8, bias=False)
    x, a = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 12, generator=g)
    want = x + lin(a).detach()
    with torch.no_grad():
        x1 = x.clone()
        out = add_linear(x1, a, lin)
    assert out.data_ptr() == x1.data_ptr()
    torch.testing.assert_close(out, want)
    xg = x.clone().requires_grad_()
    out = add_linear(xg, a, lin)
    assert out.data_ptr() != xg.data_ptr()
    torch.testing.assert_close(out.detach(), want)
    out.sum().backward()
    assert xg.grad is not None and lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


# -- config values are type-checked field by field, from the dataclass's annotations -------------
@pytest.mark.parametrize("key,value,expected", [
    ("cross_rope", "false", "true or false"),         # a string "false" would be truthy
    ("cross_rope", 0, "true or false"),
    ("tie_embeddings", None, "true or false"),
    ("dim", True, "an integer"),                      # bools are not ints
    ("dim", 64.0, "an integer"),
    ("dim", "64", "an integer"),
    ("cross_logn", 1.5, "an integer"),
    ("rope_theta", "abc", "a finite number"),
    ("rope_theta", float("nan"), "a finite number"),
    ("norm_eps", float("inf"), "a finite number"),
    ("embed_scale", False, "a finite number"),
    ("arch", "llama", "one of 'yoco', 'transformer'"),
    ("self_decoder", "GRET", "one of 'gret', 'swa'"),
    ("rope_scaling", [1, 2], "an object or null"),
    ("rope_scaling", "llama3", "an object or null"),
    ("tokenizer", 5, "a string"),
])
def test_config_values_of_the_wrong_type_are_refused_naming_the_key(key, value, expected):
    d = get_config("yoco-tiny").to_dict()
    with pytest.raises(ValueError) as e:
        ModelConfig.from_dict({**d, key: value})
    assert str(e.value) == f"config key {key}: expected {expected}, not {value!r}"
    with pytest.raises(ValueError, match=f"config key {key}: expected"):
        get_config("yoco-tiny").replace(**{key: value})


def test_config_ints_are_accepted_as_floats():
    cfg = ModelConfig.from_dict({**get_config("yoco-tiny").to_dict(), "rope_theta": 500000, "norm_eps": 0})
    assert cfg.rope_theta == 500000.0 and isinstance(cfg.rope_theta, float) and isinstance(cfg.norm_eps, float)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def _saved_checkpoint(tmp_path, **changes):
    from yoco_core import save_model

    folder = tmp_path / "ckpt"
    save_model(build_model(get_config("yoco-tiny").replace(dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                                           ffn_dim=64)), folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
    return folder


@pytest.mark.parametrize("changes,message", [
    ({"cross_rope": "false"}, "config key cross_rope: expected true or false, not 'false'"),
    ({"rope_theta": "abc"}, "config key rope_theta: expected a finite number, not 'abc'"),
])
def test_a_checkpoint_config_of_the_wrong_type_is_one_line_in_load_model_and_the_cli(tmp_path, capsys,
                                                                                       changes, message):
    from yoco_cli.main import main
    from yoco_core import CheckpointError, load_model

    folder = _saved_checkpoint(tmp_path, **changes)
    with pytest.raises(CheckpointError) as e:
        load_model(str(folder))
    assert message in str(e.value) and "\n" not in str(e.value)
    code = main(["needle", "-m", str(folder), "--ctx", "256", "--device", "cpu", "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "n" / "needle.csv").exists()
