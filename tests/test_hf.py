"""Foreign checkpoints: HF Llama (against transformers), the RoPE layout conversion, FLA YOCO
(against fla where it runs), unilm YOCO key mapping, and the local byte tokenizer."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import yoco_core.hf as hf
from yoco_core import ByteTokenizer, CheckpointError, load_model
from yoco_core.kernels.fused import rope_ref as apply_rope
from yoco_core.model import rope_cos_sin, split_state_dict

transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


def _llama_dir(tmp_path, scaling=None, tie=False, **over):
    torch.manual_seed(0)
    kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=128, vocab_size=320, rope_theta=10000.0, rope_scaling=scaling,
              tie_word_embeddings=tie, max_position_embeddings=512)
    kw.update(over)
    ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    return ref


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["rope", "llama3"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_hf_llama_logits_match_transformers(tmp_path, scaling, tie):
    ref = _llama_dir(tmp_path, None if scaling is None else dict(scaling), tie)
    ours = load_model(f"hf:{tmp_path}", dtype=torch.float32)
    assert ours.config.arch == "transformer" and ours.config.tie_embeddings == tie
    assert ours.config.rope_scaling == (None if scaling is None else LLAMA3)
    ids = torch.randint(0, 320, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits.float()
    got = ours(ids)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    # the cached path of the converted model agrees too
    last, cache = ours.prefill(ids[:, :60])
    step, _ = ours.decode(ids[:, 60:], cache)
    assert torch.allclose(last, want[:, 59], atol=1e-4)
    assert torch.allclose(step, want[:, 60:], atol=1e-4)
    if scaling is not None:  # the scaling matters at these positions: dropping it changes the logits
        from yoco_core import build_model

        plain = build_model(ours.config.replace(rope_scaling=None))
        plain.load_state_dict(ours.state_dict())
        assert not torch.allclose(plain(ids), want, atol=1e-3)


@pytest.mark.parametrize("over,needle", [
    (dict(head_dim=32), "head_dim"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
])
def test_hf_llama_refusals_are_one_line(tmp_path, over, needle):
    _llama_dir(tmp_path, **over)
    with pytest.raises(CheckpointError) as e:
        load_model(f"hf:{tmp_path}")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_hf_unknown_model_type_and_missing_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2'"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(f"hf:{tmp_path / 'nope'}")


def test_byte_tokenizer_dir_matches_byte_tokenizer():
    text = "Héllo wörld 🙂\n\tThe special magic number for amber-falcon is: 1234567."
    ids = ByteTokenizer().encode(text)
    auto = transformers.AutoTokenizer.from_pretrained(str(hf.BYTE_TOKENIZER_DIR))
    assert auto(text).input_ids == ids and auto.decode(ids) == text
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (256, 257, 258)
    tok = hf.HFTokenizer(hf.BYTE_TOKENIZER_DIR)
    assert tok.encode(text, add_bos=True) == [256] + ids and tok.decode(ids) == text


def _interleaved_rope(x, pos, theta):
    """GPT-J style rotation of pairs (2i, 2i+1), written independently of our rotate-half."""
    d = x.shape[-1]
    freqs = torch.outer(pos.float(), 1.0 / theta ** (torch.arange(0, d, 2).float() / d))
    cos, sin = freqs.cos()[:, None, :], freqs.sin()[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def test_interleaved_rows_permutation_gives_same_scores():
    torch.manual_seed(0)
    heads, d, dim, n = 3, 8, 24, 11
    wq, wk, x = torch.randn(heads * d, dim), torch.randn(heads * d, dim), torch.randn(n, dim)
    pos = torch.arange(n)
    q_ref = _interleaved_rope((x @ wq.T).view(n, heads, d), pos, 10000.0)
    k_ref = _interleaved_rope((x @ wk.T).view(n, heads, d), pos, 10000.0)
    cos, sin = rope_cos_sin(torch.arange(n), d, 10000.0, torch.float32)
    q = apply_rope((x @ hf.interleaved_to_half(wq, d).T).view(1, n, heads, d), cos, sin)[0]
    k = apply_rope((x @ hf.interleaved_to_half(wk, d).T).view(1, n, heads, d), cos, sin)[0]
    want = torch.einsum("qhd,khd->hqk", q_ref, k_ref)
    assert torch.allclose(torch.einsum("qhd,khd->hqk", q, k), want, atol=1e-4)
    # without the permutation the scores differ (the test can fail)
    q_raw = apply_rope((x @ wq.T).view(1, n, heads, d), cos, sin)[0]
    k_raw = apply_rope((x @ wk.T).view(1, n, heads, d), cos, sin)[0]
    assert not torch.allclose(torch.einsum("qhd,khd->hqk", q_raw, k_raw), want, atol=1e-2)


def _half_to_interleaved(w, d):
    """The inverse of ``hf.interleaved_to_half``: RoPE rows back in interleaved order."""
    order = torch.argsort(torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2))))
    return w.reshape(-1, d, w.shape[-1])[:, order].reshape(w.shape)


def _inverse_unilm(model):
    """Our YOCO state dict renamed to unilm's names (interleaved rows, embedding / sqrt(dim))."""
    cfg, st = model.config, {k: v.clone() for k, v in split_state_dict(model, model.state_dict()).items()}
    out = {"embed_tokens.weight": st["embed.weight"] / math.sqrt(cfg.dim), "layer_norm.weight": st["norm.weight"],
           "output_projection.weight": st["lm_head.weight"], "cross_decoder.kv_layer_norm.weight": st["kv_norm.weight"],
           "cross_decoder.k_proj.weight": _half_to_interleaved(st["k_proj.weight"], cfg.head_dim), "cross_decoder.v_proj.weight": st["v_proj.weight"]}
    for side, ours, n in (("self_decoder", "self_layers", len(model.self_layers)), ("cross_decoder", "cross_layers", len(model.cross_layers))):
        for i in range(n):
            p, q = f"{side}.layers.{i}.", f"{ours}.{i}."
            out[p + "mixer_layer_norm.weight"] = st[q + "attn_norm.weight"]
            out[p + "final_layer_norm.weight"] = st[q + "mlp_norm.weight"]
            out[p + "ffn.fc1.weight"], out[p + "ffn.gate.weight"] = st[q + "mlp.gate_proj.weight"], st[q + "mlp.up_proj.weight"]
            out[p + "ffn.fc2.weight"] = st[q + "mlp.down_proj.weight"]
            hd = cfg.self_head_dim if side == "self_decoder" else cfg.head_dim
            out[p + "mixer.q_proj.weight"] = _half_to_interleaved(st[q + "attn.q_proj.weight"], hd)
            out[p + "mixer.out_proj.weight"] = st[q + "attn.o_proj.weight"]
            if side == "self_decoder":
                out[p + "mixer.k_proj.weight"] = _half_to_interleaved(st[q + "attn.k_proj.weight"], hd)
                out[p + "mixer.v_proj.weight"] = st[q + "attn.v_proj.weight"]
                for n2 in ("g", "gt"):
                    out[p + f"mixer.{n2}_proj.weight"] = st[q + f"attn.{n2}_proj.weight"]
    return out


def test_unilm_key_mapping(tmp_path):
    from conftest import small_model

    params = {"dim": 64, "n_layers": 4, "hidden_dim": 128, "n_self_heads": 4, "n_attn_heads": 4,
              "n_attn_kv_heads": 2, "vocab_size": 320, "rope_theta": 10000.0, "norm_eps": 1e-5}
    (tmp_path / "params.json").write_text(json.dumps(params))
    model = small_model("yoco-gret", rope_scaling={"rope_type": "yoco"})
    torch.save({"model": _inverse_unilm(model)}, tmp_path / "model.pt")
    ours = load_model(f"unilm:{tmp_path}", dtype=torch.float32)
    ids = torch.randint(0, 320, (2, 40))
    assert torch.allclose(ours(ids), model(ids), atol=1e-4)


def _fla_runs() -> bool:
    return importlib.util.find_spec("fla") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not _fla_runs(), reason="flash-linear-attention (Triton kernels, needs a GPU) is not available")
def test_fla_yoco_logits_match_fla():
    spec = importlib.util.spec_from_file_location("check_fla_yoco", Path(__file__).parents[1] / "scripts" / "check_fla_yoco.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, kw in mod.fla_cases():
        ok, line = mod.compare(name, kw, "cuda", 2e-3)
        assert ok, line


def test_fla_yoco_config_mapping_and_refusals():
    cfg, extra = hf.fla_yoco_config({
        "model_type": "yoco", "hidden_size": 128, "num_hidden_layers": 4, "num_self_decoder_layers": 2,
        "vocab_size": 320, "norm_eps": 1e-6,
        "self_decoder_attn": {"type": "gated_retention", "num_heads": 2, "gate_logit_normalizer": 16.0},
        "cross_decoder_attn": {"num_heads": 4, "num_kv_heads": 2}}, "x")
    assert (cfg.arch, cfg.self_decoder, cfg.n_self_heads, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers) == ("yoco", "gret", 2, 4, 2, 4)
    assert extra["embed_scale"] == math.sqrt(128)
    bad = [({"self_decoder_attn": {"type": "gated_deltanet"}}, "gated_deltanet"),
           ({"num_hidden_layers": 5, "num_self_decoder_layers": 2}, "equal split"),
           ({"cross_decoder_attn": {"num_heads": 4, "qk_norm": True}}, "qk_norm"),
           ({"attnres_block_size": 4}, "attnres")]
    for over, needle in bad:
        base = {"hidden_size": 128, "num_hidden_layers": 4, "num_self_decoder_layers": 2,
                "self_decoder_attn": {"type": "gated_retention", "num_heads": 2}, "cross_decoder_attn": {"num_heads": 4}}
        with pytest.raises(CheckpointError, match=needle):
            hf.fla_yoco_config(base | over, "x")


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa"])
def test_fla_yoco_key_mapping(tmp_path, kind):
    """An FLA YOCO directory (config.json with model_type yoco, FLA's tensor names) made from one
    of our models loads back to the same logits: names, the interleaved RoPE rows of FLA's gRet
    and cross-decoder projections, and the sqrt(dim) embedding scale. (Parity with FLA's own
    forward is ``test_fla_yoco_logits_match_fla``, on a GPU with flash-linear-attention; its SWA
    case needs flash-attn too.)"""
    from safetensors.torch import save_file

    from conftest import small_model

    model = small_model(kind, cross_logn=0, cross_rope=True)
    cfg = model.config
    st = split_state_dict(model, model.state_dict())
    out = {"model.embeddings.weight": st["embed.weight"] / math.sqrt(cfg.dim), "model.norm.weight": st["norm.weight"],
           "lm_head.weight": st["lm_head.weight"], "model.shared_kv_builder.kv_norm.weight": st["kv_norm.weight"],
           "model.shared_kv_builder.k_proj.weight": _half_to_interleaved(st["k_proj.weight"], cfg.head_dim),
           "model.shared_kv_builder.v_proj.weight": st["v_proj.weight"]}
    for side in ("self_layers", "cross_layers"):
        for i in range(cfg.n_layers // 2):
            p, q = f"model.{side}.{i}.", f"{side}.{i}."
            for n in ("attn_norm.weight", "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                      "mlp.down_proj.weight", "attn.o_proj.weight"):
                out[p + n] = st[q + n]
            if side == "cross_layers":
                out[p + "attn.q_proj.weight"] = _half_to_interleaved(st[q + "attn.q_proj.weight"], cfg.head_dim)
            elif cfg.self_decoder == "gret":
                for n in ("q", "k"):
                    out[p + f"attn.{n}_proj.weight"] = _half_to_interleaved(st[q + f"attn.{n}_proj.weight"], cfg.self_head_dim)
                for n in ("v", "g"):
                    out[p + f"attn.{n}_proj.weight"] = st[q + f"attn.{n}_proj.weight"]
                out[p + "attn.gk_proj.weight"] = st[q + "attn.gt_proj.weight"]
            else:
                for n in ("q", "k", "v"):
                    out[p + f"attn.{n}_proj.weight"] = st[q + f"attn.{n}_proj.weight"]
    self_attn = ({"type": "gated_retention", "num_heads": cfg.n_self_heads} if cfg.self_decoder == "gret"
                 else {"type": "swa", "num_heads": cfg.n_self_heads, "window_size": cfg.window})
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "yoco", "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
        "num_self_decoder_layers": cfg.n_layers // 2, "vocab_size": cfg.vocab_size, "norm_eps": cfg.norm_eps,
        "intermediate_size": cfg.ffn_dim, "self_decoder_attn": self_attn,
        "cross_decoder_attn": {"num_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads}}))
    save_file({k: v.contiguous() for k, v in out.items()}, str(tmp_path / "model.safetensors"))
    ours = load_model(f"hf:{tmp_path}", dtype=torch.float32)
    assert (ours.config.self_decoder, ours.config.window) == (cfg.self_decoder, cfg.window)
    ids = torch.randint(0, 320, (2, 40))
    torch.testing.assert_close(ours(ids), model(ids), atol=1e-4, rtol=1e-4)
