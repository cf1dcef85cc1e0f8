"""The transformers fallback (yoco_core.fallback): tiny random GPT-2 and GPT-NeoX folders, built
with transformers on the fly beside a byte-level BPE tokenizer, run through our models' API.

What a user relies on: the full forward is transformers' own; prefill, token-by-token and
multi-token decode, and chunked prefill agree with it; ``generate`` gives transformers' own
greedy tokens, needle cells and lm-eval scoring run on it unchanged; the cache reports its real
bytes; the fallback announces itself once; a tokenizer too large for the embedding, a folder
transformers cannot load, a pickle that is more than tensors and a missing transformers are each
one line."""
import json
import random
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from yoco_core import CheckpointError, generate  # noqa: E402
from yoco_core import needle as nd  # noqa: E402
from yoco_core.errors import Notice  # noqa: E402
from yoco_core.fallback import FallbackCache, load_fallback  # noqa: E402

EOS = "<|endoftext|>"
N_POS = 256
ARCHS = ("gpt2", "gpt_neox")


def _tokenizer(folder: Path) -> int:
    """A byte-level BPE trained on the needle texts and prose (GPT-2 style; EOS id 0) written to
    ``folder``; returns its vocabulary size."""
    rng = random.Random(0)
    g = nd.grammar()
    corpus = [nd.INTRO, *nd.NOISE, nd.QUESTION.format(key="shy-otter"), nd.NEEDLE.format(key="a-b", value="4819302"),
              " ".join(g["key_adjectives"] + g["key_nouns"])]
    corpus += [nd.prose_sentence(rng) for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=800, show_progress=False, special_tokens=[EOS],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": EOS, "eos_token": EOS}))
    return tok.get_vocab_size()


def _hf_model(arch: str, vocab: int, seed: int = 0):
    """A tiny random model of ``arch``, its weights moved well off their init (matrices plus 0.1
    randn, norms and biases, the 1-d ones, plus 0.2 randn): attention sharp enough that the greedy
    tokens depend on the context, so a decode that lost its cache gives other tokens."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=N_POS, vocab_size=vocab,
                                      bos_token_id=0, eos_token_id=0)
        ref = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=N_POS, vocab_size=vocab,
                                         bos_token_id=0, eos_token_id=0)
        ref = transformers.GPTNeoXForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() == 1 else 0.1))
    return ref.eval()


def _folder(root: Path, arch: str, vocab: int | None = None, seed: int = 0):
    """``root`` holding a saved model of ``arch`` and the tokenizer; (folder, reference model)."""
    n = _tokenizer(root)
    ref = _hf_model(arch, vocab or n, seed)
    ref.save_pretrained(root)
    return root, ref


def _load(folder: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Notice)
        return load_fallback(folder, f"hf:{folder}", dtype=torch.float32, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{arch: (folder, transformers' model, our fallback)}, built once."""
    out = {}
    for arch in ARCHS:
        folder, ref = _folder(tmp_path_factory.mktemp(arch), arch)
        out[arch] = (folder, ref, _load(folder))
    return out


def _ids(model, B: int, T: int, seed: int = 0):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_full_forward_is_transformers_own(built, arch):
    folder, ref, model = built[arch]
    ids = _ids(model, 2, 40)
    with torch.no_grad():
        want = ref(ids).logits.float()
    got = model(ids)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    cfg = model.config
    assert (cfg.name, cfg.arch, cfg.model_type, cfg.max_seq_len) == (f"hf:{folder.name}", "hf", arch, N_POS)
    assert cfg.vocab_size == ref.config.vocab_size and cfg.attn_implementation == "sdpa"
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.tokenizer.vocab_size == cfg.vocab_size and model.tokenizer.eos_id == 0
    with pytest.raises(ValueError, match=f"maximum of {N_POS}"):
        model(_ids(model, 1, N_POS + 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_decode_equal_the_full_forward(built, arch):
    _, ref, model = built[arch]
    ids = _ids(model, 2, 48, seed=1)
    full = model(ids)
    last, cache = model.prefill(ids[:, :30])
    assert isinstance(cache, FallbackCache) and (cache.batch, cache.length) == (2, 30)
    assert last.shape == (2, model.config.vocab_size) and last.dtype == torch.float32
    torch.testing.assert_close(last, full[:, 29], rtol=1e-5, atol=1e-5)
    for t in range(30, 40):                       # token by token
        step, cache = model.decode(ids[:, t: t + 1], cache)
        assert step.shape == (2, 1, model.config.vocab_size)
        torch.testing.assert_close(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
    many, cache = model.decode(ids[:, 40:], cache)    # several tokens at once
    torch.testing.assert_close(many, full[:, 40:], rtol=1e-5, atol=1e-5)
    assert cache.length == 48 == cache.hf.get_seq_length()
    # the cache's bytes are transformers' keys and values: 2 x layers x [B, heads, 48, head_dim] fp32
    c = model.config
    assert cache.nbytes() == cache.kv_nbytes() == 2 * c.n_layers * 2 * c.n_kv_heads * 48 * c.head_dim * 4
    assert cache.state_nbytes() == 0 and cache.states == []
    with pytest.raises(ValueError, match="maximum"):
        model.decode(_ids(model, 2, N_POS - 47), cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_equals_one_piece(built, arch):
    _, _, model = built[arch]
    ids = _ids(model, 2, 24, seed=2)
    whole, cache = model.prefill(ids)
    after, _ = model.decode(ids[:, :3], cache)
    for chunk in (1, 5, 24, 0):
        last, c = model.prefill(ids, chunk_size=chunk)
        torch.testing.assert_close(last, whole, rtol=1e-5, atol=1e-5)
        assert c.length == 24 == c.hf.get_seq_length()
        step, _ = model.decode(ids[:, :3], c)
        torch.testing.assert_close(step, after, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        model.prefill(ids, chunk_size=-1)
    with pytest.raises(ValueError, match="at least one token"):
        model.prefill(ids[:, :0])


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_gives_transformers_greedy_tokens(built, arch):
    _, ref, model = built[arch]
    ids = _ids(model, 2, 24, seed=3)
    ids[ids == 0] = 1                             # no EOS inside the prompts
    ours = generate(model, ids, 12)
    with torch.no_grad():
        theirs = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              pad_token_id=0)[:, 24:].tolist()
    for row, want in zip(ours.tokens, theirs):
        assert row == (want[: want.index(0)] if 0 in want else want)
    assert max(len(r) for r in ours.tokens) == 12       # not a comparison of two empty answers


def test_a_needle_cell_runs_on_the_fallback(built):
    _, _, model = built["gpt2"]
    ctx = nd.min_context(model.tokenizer, "single") + 40
    cell = nd.run_cell(model, ctx, 0.5, chunk_size=64)
    assert cell.ctx_tokens == ctx and 0.0 <= cell.score <= 1.0 and cell.prefill_seconds > 0


def test_lm_eval_scores_the_fallback_with_transformers_log_probabilities(built):
    pytest.importorskip("lm_eval")
    from yoco_cli.lm_eval_model import YOCOLM

    _, ref, model = built["gpt_neox"]
    lm = YOCOLM(pretrained="hf:tiny", model=model)
    ctx, cont = [5, 9, 17, 33], [40, 41, 42]
    (got, _), = lm._score([(ctx, cont)])
    with torch.no_grad():
        logp = F.log_softmax(ref(torch.tensor([ctx + cont])).logits.float(), -1)[0]
    want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert got == pytest.approx(want, abs=1e-4)


def test_the_fallback_announces_itself_once_in_one_line(built):
    folder = built["gpt2"][0]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_fallback(folder, f"hf:{folder}", dtype=torch.float32)
    notices = [str(w.message) for w in seen if issubclass(w.category, Notice)]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert notices[0].startswith(f"hf:{folder}: model_type 'gpt2' runs on the transformers fallback")


def test_a_tokenizer_larger_than_the_embedding_is_refused_before_the_weights(tmp_path):
    folder, _ = _folder(tmp_path, "gpt2", vocab=300)          # the tokenizer has more ids
    (folder / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(CheckpointError) as e:
        _load(folder)
    msg = str(e.value)
    assert f"the tokenizer has {_tokenizer(tmp_path / 'again')} ids" in msg and "only 300" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="cannot load the weights"):   # bytes (259 ids) fit
        _load(folder, tokenizer="bytes")


def _write_config(folder: Path, **cfg) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("case", ["unknown type", "remote code", "not causal", "no weights", "corrupt weights",
                                  "missing tensors", "no config"])
def test_a_folder_transformers_cannot_load_is_one_line(built, tmp_path, case):
    src = built["gpt2"][0]
    folder = tmp_path / "m"
    if case == "unknown type":
        _write_config(folder, model_type="no-such-model")
    elif case == "remote code":
        _write_config(folder, model_type="mine", auto_map={"AutoModelForCausalLM": "modeling_mine.Mine"})
    elif case == "not causal":
        _write_config(folder, model_type="t5")
    elif case in ("no weights", "corrupt weights", "missing tensors"):
        _write_config(folder, **json.loads((src / "config.json").read_text()))
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (folder / f).write_bytes((src / f).read_bytes())
        if case == "corrupt weights":
            (folder / "model.safetensors").write_bytes(b"\x00" * 64)
        if case == "missing tensors":
            from safetensors.torch import load_file, save_file

            state = load_file(str(src / "model.safetensors"))
            state.pop(next(k for k in state if k.endswith("mlp.c_fc.weight")))
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        folder.mkdir()
    with pytest.raises(CheckpointError) as e:
        load_fallback(folder, "hf:m")
    msg = str(e.value)
    assert msg.startswith("hf:m: ") and "\n" not in msg, msg
    expect = {"unknown type": "no-such-model", "remote code": "auto_map", "not causal": "no causal-LM class",
              "no weights": "cannot load the weights", "corrupt weights": "cannot load the weights",
              "missing tensors": "mlp.c_fc.weight", "no config": "no config.json"}[case]
    assert expect in msg, msg


def _touch(path):
    Path(path).write_text("ran")


class _Payload:
    """What a hostile pickle holds: unpickling it calls ``_touch``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _touch, (self.path,)


def test_bin_weights_are_read_only_as_tensors(built, tmp_path):
    src, ref, model = built["gpt_neox"]
    folder = tmp_path / "bin"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((src / f).read_bytes())
    torch.save({k: v.clone() for k, v in ref.state_dict().items()}, folder / "pytorch_model.bin")
    ids = _ids(model, 1, 20)
    assert torch.equal(_load(folder)(ids), model(ids))
    marker = tmp_path / "marker"
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["gpt_neox.embed_in.weight"] = _Payload(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        _load(folder)
    assert "\n" not in str(e.value) and not marker.exists()


def test_a_missing_transformers_is_one_line_naming_the_extra(built, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CheckpointError) as e:
        load_fallback(built["gpt2"][0], "hf:m")
    assert "yoco[hf]" in str(e.value) and "\n" not in str(e.value)


def test_a_users_tokenizer_replaces_the_folders(built):
    model = _load(built["gpt2"][0], tokenizer="bytes")
    assert model.tokenizer.name == "bytes"
    assert generate(model, torch.tensor([model.tokenizer.encode("The sky", add_special_tokens=True)]), 3).tokens
