"""Foreign checkpoints (yoco_core.convert): HF Llama (against transformers), the RoPE layout
conversion, FLA YOCO (against fla where it runs), unilm YOCO key mapping, every key table, and the
tokenizers: the local byte tokenizer, a converted folder's tokenizer travelling with save_model."""
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from yoco_core import ByteTokenizer, CheckpointError, HFTokenizer, load_model, save_model
from yoco_core.convert import fla_yoco, hf_llama, unilm_yoco
from yoco_core.convert.remap import interleaved_to_half, remap
from yoco_core.tokenizer import BYTE_TOKENIZER_DIR
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
    ours = load_model(f"hf:{tmp_path}", dtype=torch.float32, tokenizer="bytes")
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


@pytest.mark.parametrize("over", [dict(head_dim=32), dict(attention_bias=True), dict(mlp_bias=True)],
                         ids=["head_dim", "attention_bias", "mlp_bias"])
def test_hf_llama_once_refused_settings_now_load_exactly(tmp_path, over):
    ref = _llama_dir(tmp_path, **over)
    ours = load_model(f"hf:{tmp_path}", dtype=torch.float32, tokenizer="bytes")
    ids = torch.randint(0, 320, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(ids).logits.float()
    assert ((ours(ids) - want).abs().max() / want.abs().max()) < 1e-5


def test_hf_llama_refuses_a_key_it_does_not_read(tmp_path):
    """A Mistral window written into a LLaMA config: transformers ignores it, we refuse it."""
    _llama_dir(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "sliding_window": 128}))
    with pytest.raises(CheckpointError) as e:
        load_model(f"hf:{tmp_path}", tokenizer="bytes")
    assert "sliding_window" in str(e.value) and "\n" not in str(e.value)


def test_hf_unknown_model_type_and_missing_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    with pytest.raises(CheckpointError) as e:
        load_model(f"hf:{tmp_path}")
    assert "no-such-family" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(f"hf:{tmp_path / 'nope'}")


def test_byte_tokenizer_dir_matches_byte_tokenizer():
    text = "Héllo wörld 🙂\n\tThe special magic number for amber-falcon is: 1234567."
    ids = ByteTokenizer().encode(text)
    auto = transformers.AutoTokenizer.from_pretrained(str(BYTE_TOKENIZER_DIR))
    assert auto(text).input_ids == ids and auto.decode(ids) == text
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (256, 257, 258)
    tok = HFTokenizer(BYTE_TOKENIZER_DIR)
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
    q = apply_rope((x @ interleaved_to_half(wq, d).T).view(1, n, heads, d), cos, sin)[0]
    k = apply_rope((x @ interleaved_to_half(wk, d).T).view(1, n, heads, d), cos, sin)[0]
    want = torch.einsum("qhd,khd->hqk", q_ref, k_ref)
    assert torch.allclose(torch.einsum("qhd,khd->hqk", q, k), want, atol=1e-4)
    # without the permutation the scores differ (the test can fail)
    q_raw = apply_rope((x @ wq.T).view(1, n, heads, d), cos, sin)[0]
    k_raw = apply_rope((x @ wk.T).view(1, n, heads, d), cos, sin)[0]
    assert not torch.allclose(torch.einsum("qhd,khd->hqk", q_raw, k_raw), want, atol=1e-2)


def _half_to_interleaved(w, d):
    """The inverse of ``interleaved_to_half``: RoPE rows back in interleaved order."""
    order = torch.argsort(torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2))))
    return w.reshape(-1, d, w.shape[-1])[:, order].reshape(w.shape)


def _inverse_unilm(model):
    """Our YOCO state dict renamed to unilm's names (interleaved rows, the embedding scaled to
    their sqrt(dim); tied: no output_projection)."""
    cfg, st = model.config, {k: v.clone() for k, v in split_state_dict(model, model.state_dict()).items()}
    out = {"embed_tokens.weight": st["embed.weight"] * cfg.embed_scale / math.sqrt(cfg.dim), "layer_norm.weight": st["norm.weight"],
           "cross_decoder.kv_layer_norm.weight": st["kv_norm.weight"],
           "cross_decoder.k_proj.weight": _half_to_interleaved(st["k_proj.weight"], cfg.head_dim), "cross_decoder.v_proj.weight": st["v_proj.weight"]}
    if not cfg.tie_embeddings:                  # tied: their checkpoint has no output_projection
        out["output_projection.weight"] = st["lm_head.weight"]
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
                for n2 in ("g", "gt") if cfg.self_decoder == "gret" else ():
                    out[p + f"mixer.{n2}_proj.weight"] = st[q + f"attn.{n2}_proj.weight"]
    return out


@pytest.mark.parametrize("kind,tie", [("yoco-gret", False), ("yoco-swa", False), ("yoco-gret", True)],
                         ids=["gret", "swa", "gret-tied"])
def test_unilm_key_mapping(tmp_path, kind, tie):
    """A unilm folder made from one of our models (self head size 32, cross head size 16: each
    RoPE permutation needs its own) loads back to the same logits; SWA (``sliding_window``, no
    g / gt) and a tied head (no ``output_projection``) too."""
    from conftest import small_model

    params = {"dim": 64, "n_layers": 4, "hidden_dim": 128, "n_self_heads": 2, "n_attn_heads": 4,
              "n_attn_kv_heads": 2, "vocab_size": 320, "rope_theta": 10000.0, "norm_eps": 1e-5}
    if kind == "yoco-swa":
        params["sliding_window"] = 16
    (tmp_path / "params.json").write_text(json.dumps(params))
    # tied, their head is their unscaled embedding: ours the same only with their embed_scale
    model = small_model(kind, rope_scaling={"rope_type": "yoco"}, n_self_heads=2, tie_embeddings=tie,
                        embed_scale=math.sqrt(64) if tie else 1.0)
    assert model.config.self_head_dim != model.config.head_dim
    torch.save({"model": _inverse_unilm(model)}, tmp_path / "model.pt")
    ours = load_model(f"unilm:{tmp_path}", dtype=torch.float32, tokenizer="bytes")
    assert (ours.config.self_decoder, ours.config.window, ours.config.tie_embeddings) == \
        (model.config.self_decoder, model.config.window, tie)
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
    cfg = fla_yoco.fla_yoco_config({
        "model_type": "yoco", "hidden_size": 128, "num_hidden_layers": 4, "num_self_decoder_layers": 2,
        "vocab_size": 320, "norm_eps": 1e-6,
        "self_decoder_attn": {"type": "gated_retention", "num_heads": 2, "gate_logit_normalizer": 16.0},
        "cross_decoder_attn": {"num_heads": 4, "num_kv_heads": 2}}, "x")
    assert (cfg.arch, cfg.self_decoder, cfg.n_self_heads, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers) == ("yoco", "gret", 2, 4, 2, 4)
    assert cfg.embed_scale == math.sqrt(128)
    bad = [({"self_decoder_attn": {"type": "gated_deltanet"}}, "gated_deltanet"),
           ({"num_hidden_layers": 5, "num_self_decoder_layers": 2}, "equal split"),
           ({"cross_decoder_attn": {"num_heads": 4, "qk_norm": True}}, "qk_norm"),
           ({"attnres_block_size": 4}, "attnres")]
    for over, needle in bad:
        base = {"hidden_size": 128, "num_hidden_layers": 4, "num_self_decoder_layers": 2,
                "self_decoder_attn": {"type": "gated_retention", "num_heads": 2}, "cross_decoder_attn": {"num_heads": 4}}
        with pytest.raises(CheckpointError, match=needle):
            fla_yoco.fla_yoco_config(base | over, "x")


@pytest.mark.parametrize("source,config,needle", [
    ("hf", {"model_type": "yoco", "self_decoder_attn": {"type": "gated_deltanet"}}, "gated_deltanet"),
    ("hf", {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 128, "vocab_size": 320, "logits_scaling": 2.0}, "logits_scaling"),
    ("unilm", {"dim": 64, "n_layers": 3, "hidden_dim": 128, "n_self_heads": 2, "n_attn_heads": 4}, "even n_layers"),
], ids=["fla-deltanet", "llama-unread-key", "unilm-odd-layers"])
def test_a_refused_config_is_refused_before_any_weight_is_read(tmp_path, source, config, needle):
    """The refusal, not "no weights": a config is checked before its weights are read."""
    (tmp_path / ("config.json" if source == "hf" else "params.json")).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=needle) as e:
        load_model(f"{source}:{tmp_path}")
    assert "no weights" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa"])
def test_fla_yoco_key_mapping(tmp_path, kind):
    """An FLA YOCO directory (config.json with model_type yoco, FLA's tensor names) made from one
    of our models loads back to the same logits: names, the interleaved RoPE rows of FLA's gRet
    and cross-decoder projections, and the sqrt(dim) embedding scale. (Parity with FLA's own
    forward is ``test_fla_yoco_logits_match_fla``, on a GPU with flash-linear-attention; its SWA
    case needs flash-attn too.)"""
    from safetensors.torch import save_file

    from conftest import small_model

    model = small_model(kind, cross_logn=0, cross_rope=True, n_self_heads=2)
    cfg = model.config
    assert cfg.self_head_dim != cfg.head_dim              # a wrong RoPE head size would show
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
    ours = load_model(f"hf:{tmp_path}", dtype=torch.float32, tokenizer="bytes")
    assert (ours.config.self_decoder, ours.config.window) == (cfg.self_decoder, cfg.window)
    ids = torch.randint(0, 320, (2, 40))
    torch.testing.assert_close(ours(ids), model(ids), atol=1e-4, rtol=1e-4)


TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "


def _train_tokenizer(folder: Path) -> None:
    """A small byte-level BPE (trained with the tokenizers library) and its special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


@pytest.mark.parametrize("generation_config", [True, False], ids=["with-gen-config", "without-gen-config"])
def test_a_converted_checkpoint_moves_with_its_tokenizer(tmp_path, generation_config):
    """hf: -> save_model -> moved elsewhere, the source deleted: the same logits, the same ids
    (bos / eos / pad from their config.json too, which ours replaces: carried into
    generation_config.json when the source has none)."""
    src = tmp_path / "hf"
    _llama_dir(src)
    _train_tokenizer(src)
    if not generation_config:
        (src / "generation_config.json").unlink()
    ours = load_model(f"hf:{src}", dtype=torch.float32)
    assert (ours.tokenizer.bos_id, ours.tokenizer.eos_id, ours.tokenizer.pad_id) == (1, 2, 2)  # their config.json's
    assert ours.config.tokenizer == "folder" and isinstance(ours.tokenizer, HFTokenizer)
    assert ours.tokenizer.encode(TEXT) != ByteTokenizer().encode(TEXT)      # the trained BPE, not bytes
    saved = save_model(ours, tmp_path / "saved")
    assert json.loads((saved / "config.json").read_text())["tokenizer"] == "folder"
    assert str(tmp_path) not in (saved / "config.json").read_text()
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in saved.iterdir()}
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(str(saved), str(moved))
    shutil.rmtree(src)
    back = load_model(str(moved), dtype=torch.float32)
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(2))
    assert torch.equal(back(ids), ours(ids))
    a, b = ours.tokenizer, back.tokenizer
    assert b.path == moved and b.encode(TEXT, add_bos=True) == a.encode(TEXT, add_bos=True)
    assert (b.bos_id, b.eos_id, b.pad_id, b.vocab_size) == (a.bos_id, a.eos_id, a.pad_id, a.vocab_size)
    assert b.decode(b.encode(TEXT)) == TEXT


def _expand(table, cfg):
    """(theirs, ours, ours' pattern) of ``table`` for ``cfg``, every ``{}`` over one stack's layers."""
    depth = cfg.n_layers if cfg.arch == "transformer" else cfg.n_layers // 2
    return [(t.replace("{}", str(i)), o.replace("{}", str(i)), o) for t, o in table.names.items()
            for i in (range(depth) if "{}" in t else [None])]


TABLES = [("llama", hf_llama.TABLE, "transformer"), ("fla-gret", fla_yoco.GRET, "yoco-gret"),
          ("fla-swa", fla_yoco.SWA, "yoco-swa"), ("unilm-gret", unilm_yoco.GRET, "yoco-gret"),
          ("unilm-swa", unilm_yoco.SWA, "yoco-swa")]


@pytest.mark.parametrize("name,table,kind", TABLES, ids=[t[0] for t in TABLES])
def test_each_table_covers_every_parameter_exactly_once(name, table, kind):
    """ours <- theirs: every parameter of the model named once, each of their names once; remap of
    a state named by the table gives back exactly our (split) state; a missing or an unknown
    tensor is a one-line error; RoPE buffers are ignored; a tied head is optional."""
    from conftest import small_model

    model = small_model(kind, **({} if kind == "transformer" else {"n_self_heads": 2}))
    cfg = model.config
    assert kind == "transformer" or cfg.self_head_dim != cfg.head_dim       # the head sizes differ
    ours = split_state_dict(model, model.state_dict())
    pairs = _expand(table, cfg)
    assert sorted(o for _, o, _ in pairs) == sorted(ours)               # each parameter exactly once
    assert len({t for t, _, _ in pairs}) == len(pairs)
    assert set(table.rope) <= set(table.names.values())
    theirs = {t: ours[o] for t, o, _ in pairs}
    mapped = remap({**theirs, "x.rotary_emb.inv_freq": torch.ones(2)}, table, cfg, "src")
    assert mapped.keys() == ours.keys()
    for _, o, pattern in pairs:                                          # only the RoPE rows move
        assert torch.equal(mapped[o], ours[o]) == (pattern not in table.rope), o
        if pattern in table.rope:                                        # ... by their own head size
            size = cfg.self_head_dim if pattern.startswith("self_layers.") else cfg.head_dim
            assert torch.equal(mapped[o], interleaved_to_half(ours[o], size)), o
    first = pairs[1][0]
    with pytest.raises(CheckpointError, match=rf"^src: missing tensor {first}$"):
        remap({k: v for k, v in theirs.items() if k != first}, table, cfg, "src")
    with pytest.raises(CheckpointError, match=r"^src: 1 tensors this loader does not know \(e.g. bogus.weight\)$"):
        remap({**theirs, "bogus.weight": torch.ones(1)}, table, cfg, "src")
    tied = cfg.replace(tie_embeddings=True)
    head = next(t for t, o, _ in pairs if o == "lm_head.weight")
    for state in (theirs, {k: v for k, v in theirs.items() if k != head}):
        assert "lm_head.weight" not in remap(state, table, tied, "src")


# -- the converted families' config reading (no weights needed: config_map) ---------------------------
def _family(kind):
    from yoco_core.convert import FAMILIES

    return FAMILIES[kind]


def test_absent_keys_take_the_transformers_class_defaults():
    """A config.json may leave keys out; transformers then uses its class's defaults, and so do we
    (a Mistral without sliding_window has a 4096 window, a Gemma its 256-wide heads)."""
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=96, vocab_size=320)
    mistral = _family("mistral").config_map({"model_type": "mistral", **base}, "x", "m")
    assert mistral.layer_windows == [4096, 4096] and mistral.n_kv_heads == 8
    gemma = _family("gemma2").config_map({"model_type": "gemma2", **base}, "x", "g")
    assert (gemma.head_dim, gemma.n_kv_heads, gemma.attn_softcap, gemma.logit_softcap) == (256, 4, 50.0, 30.0)
    phi = _family("phi3").config_map({"model_type": "phi3", **base}, "x", "p")
    assert phi.norm_eps == 1e-5
    llama = _family("llama").config_map({"model_type": "llama", **base, "num_key_value_heads": None,
                                         "head_dim": None}, "x", "l")
    assert (llama.n_kv_heads, llama.head_dim) == (8, 8)


def test_published_configs_keys_are_read():
    """Keys real releases carry: Gemma-2-9b's sliding_window_size, Phi-4-mini's full_attn_mod and
    interpolate_factor, Qwen2.5-1M's dual_chunk_attention_config (vLLM's; transformers ignores it,
    so do we, with a notice)."""
    import warnings

    from yoco_core.errors import Notice

    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                intermediate_size=96, vocab_size=320)
    g = _family("gemma2").config_map({**base, "sliding_window": 4096, "sliding_window_size": 4096}, "x", "g")
    assert g.layer_windows == [4096, 0]
    with pytest.raises(CheckpointError, match="sliding_window_size"):
        _family("gemma2").config_map({**base, "sliding_window": 4096, "sliding_window_size": 8}, "x", "g")
    _family("phi3").config_map({**base, "full_attn_mod": 1, "interpolate_factor": 1}, "x", "p")
    with pytest.raises(CheckpointError, match="full_attn_mod"):
        _family("phi3").config_map({**base, "full_attn_mod": 2}, "x", "p")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _family("qwen2").config_map({**base, "dual_chunk_attention_config": {"chunk_size": 262144}}, "x", "q")
    assert [w.category for w in seen] == [Notice] and "dual_chunk" in str(seen[0].message)


@pytest.mark.parametrize("kind,over", [
    ("gemma2", {"query_pre_attn_scalar": None}), ("mistral", {"sliding_window": "abc"}),
    ("llama", {"rope_scaling": {"rope_type": ["linear"]}}), ("llama", {"rms_norm_eps": [1e-6]}),
    ("qwen2", {"use_sliding_window": True, "max_window_layers": "two"}),
], ids=["null-scalar", "string-window", "list-rope-type", "list-eps", "string-layers"])
def test_malformed_config_values_are_one_line(kind, over):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=320)
    with pytest.raises(CheckpointError) as e:
        _family(kind).config_map({**base, **over}, "src", "n")
    assert str(e.value).startswith("src") and "\n" not in str(e.value)


def test_gemma_norms_of_a_bf16_checkpoint_load_exactly_in_float32(tmp_path):
    """(1 + w) is formed in float32 from the stored w, as Gemma does it, not rounded to the
    checkpoint's bf16 (which would be off by up to 2^-8 on every norm)."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=16, intermediate_size=96, vocab_size=320, sliding_window=8)
    ref = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.05))
    ref.to(torch.bfloat16).save_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    ours = load_model(f"hf:{tmp_path}", dtype=torch.float32, tokenizer="bytes")
    ids = torch.randint(0, 320, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = theirs(ids).logits
    assert ((ours(ids) - want).abs().max() / want.abs().max()) < 1e-5
