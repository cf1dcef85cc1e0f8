"""Our RoPE against transformers' own: inverse frequencies and the cos/sin factor of every scaling,
at initialisation and along a prefill + decode run for the length-dependent ones, from the
config.json that transformers writes (rope_parameters) and from 4.x-style ones (rope_scaling)."""
import json

import pytest
import torch

from yoco_core.rope import attention_scaling, depends_on_length, hf_rope, inv_freq

transformers = pytest.importorskip("transformers", minversion="5.0")
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding  # noqa: E402

F64 = torch.float64
SHORT = [1.0 + 0.15 * i for i in range(16)]   # Phi-3-like per-frequency factors, rotary dim 32
LONG = [1.0 + 1.3 * i for i in range(16)]


def _llama(rope, head_dim=64, max_len=256, **kw):
    return transformers.LlamaConfig(hidden_size=128, num_attention_heads=128 // head_dim, head_dim=head_dim,
                                    num_hidden_layers=1, max_position_embeddings=max_len,
                                    rope_parameters={"rope_theta": 5e5, **rope}, **kw)


def _phi3(rope, **kw):  # head dim 64, half of it rotated: 16 frequencies
    return transformers.Phi3Config(hidden_size=256, num_attention_heads=4, num_hidden_layers=1,
                                   partial_rotary_factor=0.5, max_position_embeddings=1024,
                                   original_max_position_embeddings=256, rope_parameters=rope, **kw)


def _module(cfg):
    return (Phi3RotaryEmbedding if cfg.model_type == "phi3" else LlamaRotaryEmbedding)(cfg)


CASES = {
    "default": lambda: _llama({"rope_type": "default"}, head_dim=32),
    "linear": lambda: _llama({"rope_type": "linear", "factor": 4.0}),
    "dynamic": lambda: _llama({"rope_type": "dynamic", "factor": 2.0}, max_len=64),
    "yarn": lambda: _llama({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "yarn-explicit": lambda: _llama({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                     "attention_factor": 1.3, "beta_fast": 16.0, "beta_slow": 2.0,
                                     "truncate": False}),
    "yarn-mscale-partial": lambda: _llama({"rope_type": "yarn", "factor": 4.0, "mscale": 1.0,
                                           "mscale_all_dim": 0.5, "original_max_position_embeddings": 64,
                                           "partial_rotary_factor": 0.5}),
    "longrope": lambda: _phi3({"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG}),
    "longrope-explicit": lambda: _phi3({"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                                        "factor": 2.0, "attention_factor": 1.1}),
    "llama3": lambda: _llama({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
}


def _same(ours, theirs):
    """Ours (float64) equals transformers' (float32) to 1e-6 relative."""
    assert ours.dtype == F64 and ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = ((ours - theirs.double()).abs() / theirs.double().abs()).max().item()
    assert err < 1e-6, err


def _saved(cfg, tmp_path) -> dict:
    cfg.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_initialisation_matches_transformers(case, tmp_path):
    cfg = CASES[case]()
    ref = _module(cfg)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta, scaling, rot = hf_rope(_saved(cfg, tmp_path), "src", head_dim)
    assert (theta, scaling, rot) == hf_rope(cfg.to_dict(), "src", head_dim)
    assert json.loads(json.dumps(scaling)) == scaling                 # saved in our config.json as is
    assert (scaling is None) == (case == "default") and rot == 2 * ref.inv_freq.numel()
    ours = inv_freq(rot, theta, scaling, dtype=F64)
    _same(ours, ref.inv_freq)
    assert attention_scaling(rot, theta, scaling) == pytest.approx(ref.attention_scaling, rel=1e-12)
    assert depends_on_length(scaling) == (case in ("dynamic", "longrope", "longrope-explicit"))
    if case in ("default", "llama3"):                                 # float32: bit-identical
        assert torch.equal(inv_freq(rot, theta, scaling), ref.inv_freq)
    if case not in ("default", "dynamic"):                            # the case does scale something
        plain = inv_freq(rot, theta, None, dtype=F64)
        assert not torch.allclose(ours, plain) or attention_scaling(rot, theta, scaling) != 1.0


def _run(ref, prefill: int, last: int):
    """transformers' frequencies at a prefill of ``prefill`` then each decode step to ``last``: (seq_len, inv_freq)."""
    x = torch.zeros(1)
    ref(x, torch.arange(prefill)[None])
    yield prefill, ref.inv_freq.clone()
    for pos in range(prefill, last):
        ref(x, torch.tensor([[pos]]))
        yield pos + 1, ref.inv_freq.clone()


@pytest.mark.parametrize("case,runs", [
    ("dynamic", [(40, 70), (100, 104)]),          # max_position_embeddings 64: 64 is still original
    ("longrope", [(250, 260), (300, 302)]),       # original 256: long factors from 257 on
])
def test_length_dependent_frequencies_follow_transformers(case, runs):
    cfg = CASES[case]()
    theta, scaling, rot = hf_rope(cfg.to_dict(), "src", cfg.hidden_size // cfg.num_attention_heads)
    threshold = 64 if case == "dynamic" else 256
    seen = set()
    for prefill, last in runs:
        ref = _module(cfg)                                            # a fresh model per sequence
        for seq_len, theirs in _run(ref, prefill, last):
            _same(inv_freq(rot, theta, scaling, seq_len=seq_len, dtype=F64), theirs)
            assert attention_scaling(rot, theta, scaling) == pytest.approx(ref.attention_scaling, rel=1e-12)
            seen.add((seq_len > threshold, torch.equal(theirs, ref.original_inv_freq)))
    assert seen == {(False, True), (True, False)}                    # both regimes were crossed


@pytest.mark.parametrize("case", ["dynamic", "longrope"])
def test_device_tensor_seq_len_equals_the_int(case):
    cfg = CASES[case]()
    theta, scaling, rot = hf_rope(cfg.to_dict(), "src", cfg.hidden_size // cfg.num_attention_heads)
    for n in (1, 63, 64, 65, 256, 257, 3000):
        want = inv_freq(rot, theta, scaling, seq_len=n)
        for t in (torch.tensor(n), torch.tensor([n], dtype=torch.int32)):
            assert torch.equal(inv_freq(rot, theta, scaling, seq_len=t), want), n
    # on the meta device any read of the length's value (a host sync) raises: there is none
    meta = inv_freq(rot, theta, scaling, device="meta", seq_len=torch.tensor([300], device="meta"))
    assert meta.is_meta and meta.shape == (rot // 2,)


LEGACY = {  # 4.4x config.json forms: rope_scaling + top-level rope_theta / partial_rotary_factor
    "llama-dynamic": ("llama", {"rope_theta": 5e5, "max_position_embeddings": 64,
                                "rope_scaling": {"type": "dynamic", "factor": 2.0}}),
    "llama-yarn-partial": ("llama", {"rope_theta": 5e5, "max_position_embeddings": 256, "partial_rotary_factor": 0.5,
                                     "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                      "original_max_position_embeddings": 64}}),
    "llama3": ("llama", {"rope_theta": 5e5, "max_position_embeddings": 256, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}),
    "phi3": ("phi3", {"rope_theta": 1e4, "max_position_embeddings": 1024, "original_max_position_embeddings": 256,
                      "partial_rotary_factor": 0.5, "rope_scaling": {"type": "longrope", "short_factor": SHORT,
                                                                     "long_factor": LONG}}),
}


@pytest.mark.parametrize("case", list(LEGACY))
def test_legacy_rope_scaling_configs(case):
    model_type, rope = LEGACY[case]
    hf = {"model_type": model_type, "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 1, **rope}
    cls = transformers.Phi3Config if model_type == "phi3" else transformers.LlamaConfig
    ref = _module(cls.from_dict(json.loads(json.dumps(hf))))
    theta, scaling, rot = hf_rope(hf, "src", 64)
    assert scaling is not None and rot == 2 * ref.inv_freq.numel()
    _same(inv_freq(rot, theta, scaling, dtype=F64), ref.inv_freq)
    assert attention_scaling(rot, theta, scaling) == pytest.approx(ref.attention_scaling, rel=1e-12)
    if model_type == "phi3":  # Phi-3's first name for it (transformers 5 itself no longer loads "su")
        su = {**hf, "rope_scaling": {**hf["rope_scaling"], "type": "su"}}
        assert hf_rope(su, "src", 64) == (theta, scaling, rot)


GEMMA = dict(hidden_size=128, num_attention_heads=2, head_dim=64, num_hidden_layers=6, max_position_embeddings=4096)


@pytest.mark.parametrize("form", ["rope_parameters", "legacy"])
def test_gemma3_per_layer_type(form, tmp_path):
    if form == "legacy":   # 4.5x: rope_scaling (rope_theta absent: Gemma 3's 1e6), rope_local_base_freq
        hf = {"model_type": "gemma3_text", **GEMMA, "rope_local_base_freq": 2e4,
              "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
        cfg = transformers.Gemma3TextConfig.from_dict(json.loads(json.dumps(hf)))
    else:
        cfg = transformers.Gemma3TextConfig(**GEMMA, rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}})
        hf = _saved(cfg, tmp_path)
    ref = Gemma3RotaryEmbedding(cfg)
    for layer_type in ("full_attention", "sliding_attention"):
        theta, scaling, rot = hf_rope(hf, "src", 64, layer_type)
        assert (scaling is None) == (layer_type == "sliding_attention")
        assert theta == (1e6 if layer_type == "full_attention" else 2e4)
        _same(inv_freq(rot, theta, scaling, dtype=F64), getattr(ref, f"{layer_type}_inv_freq"))
        assert attention_scaling(rot, theta, scaling) == getattr(ref, f"{layer_type}_attention_scaling")
    if form == "rope_parameters":
        with pytest.raises(ValueError, match="^src: .*layer_type"):
            hf_rope(hf, "src", 64)


def _longrope(n):
    return {"rope_type": "longrope", "short_factor": [1.0] * n, "long_factor": [1.0] * n}


@pytest.mark.parametrize("hf,needle", [
    ({"rope_parameters": {"rope_type": "ntk-by-parts", "factor": 2.0}}, "'ntk-by-parts'"),
    ({"rope_scaling": {"type": "su", "short_factor": [1.0] * 32, "long_factor": [1.0] * 32}}, "'su'"),  # not Phi-3
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "long_mscale": 1.2}}, "'long_mscale'"),
    ({"rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12]}}, "'mrope_section'"),
    ({"rope_parameters": {"rope_type": "linear"}}, "'factor'"),
    ({"rope_parameters": {"rope_type": "linear", "factor": "2"}}, "'factor'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "max_position_embeddings"),
    ({"max_position_embeddings": 64, "rope_parameters": _longrope(16)}, "'short_factor'"),   # needs 32
    ({"partial_rotary_factor": 0.3, "rope_theta": 1e4}, "rotary dim 19"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}, "foo": {}}}, "'foo'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "'sliding_attention'"),
])
def test_hf_settings_we_cannot_honour_are_refused(hf, needle):
    with pytest.raises(ValueError, match=r"^src: .*" + needle) as e:
        hf_rope(hf, "src", 64, "sliding_attention" if "full_attention" in str(hf) else None)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("scaling,needle", [
    ({"rope_type": "ntk"}, "'ntk'"),
    ({"rope_type": "linear", "factor": 2.0, "beta": 1.0}, "'beta'"),
    ({"rope_type": "llama3", "factor": 8.0}, "original_max_position_embeddings"),
    ({**_longrope(8), "original_max_position_embeddings": 64, "factor": 2.0}, "short_factor must list 16"),
])
def test_our_bad_scaling_dicts_are_refused(scaling, needle):
    with pytest.raises(ValueError, match=needle):
        inv_freq(32, 1e4, scaling)
