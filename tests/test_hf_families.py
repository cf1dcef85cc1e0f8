"""transformers families loaded natively (``load_model("hf:DIR")``), each against transformers itself.

Every family is one tiny model built by transformers from its own config class (llama with q/k/v/o
and MLP biases and an explicit head_dim, a tied llama, mistral with and without a sliding window,
qwen2 and qwen3 as their real config.json files read (a ``sliding_window`` that
``use_sliding_window: false`` switches off), phi3 with partial RoPE, gemma2 with both softcaps and
``query_pre_attn_scalar``, gemma3_text with per-layer-type RoPE in the current and the 4.x config
format). Every parameter is moved far from its init (norm weights and biases random, so a dropped
bias or a gemma ``(1 + w)`` read as ``w`` shows), the model saved with ``save_pretrained``
(safetensors) beside a small tokenizer, and both sides read that folder back.

Checked: ours' float32 logits are transformers' (eager, and sdpa where the family takes it) to 1e-5
of their largest; our cached paths (prefill, decoding one and three tokens at a time, chunked
prefill, the graph-safe step run eagerly) give our full forward with every unused cache slot
poisoned; in bfloat16 we are as accurate as transformers' own bfloat16. Windows are 6 keys and
sequences 34-40 tokens, so windows bite. RoPE variants (linear, yarn, llama3, dynamic on llama;
longrope on phi3) against transformers' full forward, and where transformers' frequencies depend on
the length seen so far (dynamic, longrope) against its own cached decoding, step by step. Configs
whose math we would not reproduce are refused with one line naming the key.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpu.tolerance import MODEL_K, rel_error
from yoco_core import CausalLM, CheckpointError, load_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

W = 6            # every sliding window: a few keys, far below the sequence lengths
T = 40           # tokens of the family checks
P = 13           # the prompt before decoding (past a window, so the cache holds more than one)
PARITY = 1e-5    # max |ours - theirs| / max |theirs|, float32
BF16_SLACK = 1e-3

BASE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=160, max_position_embeddings=512)


def _qwen_as_published(cfg: dict) -> dict:
    """Qwen2.5 / Qwen3 config.json as published: a ``sliding_window`` value, ``use_sliding_window``
    false (which switches it off), ``max_window_layers`` and no ``layer_types``."""
    cfg = {k: v for k, v in cfg.items() if k != "layer_types"}
    return cfg | {"sliding_window": W, "use_sliding_window": False, "max_window_layers": 1}


def _gemma3_4x(cfg: dict) -> dict:
    """The same gemma3_text config in transformers 4.x's format (``rope_theta``,
    ``rope_local_base_freq``, ``rope_scaling`` for the full layers, ``sliding_window_pattern``)."""
    cfg = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "layer_types", "_sliding_window_pattern")}
    return cfg | {"rope_theta": 1000.0, "rope_local_base_freq": 100.0, "sliding_window_pattern": 3,
                  "rope_scaling": {"rope_type": "linear", "factor": 2.0}}


GEMMA = dict(head_dim=32, query_pre_attn_scalar=24, sliding_window=W, hidden_activation="gelu_pytorch_tanh")
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}

# name -> (transformers config class, its arguments over BASE, an edit of the saved config.json)
FAMILIES = {
    "llama": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, head_dim=32,
                                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}), None),
    "llama-tied": ("LlamaConfig", dict(tie_word_embeddings=True), None),
    "mistral": ("MistralConfig", dict(sliding_window=W, rope_parameters={"rope_type": "default", "rope_theta": 300.0}),
                None),
    "mistral-no-window": ("MistralConfig", dict(sliding_window=None), None),
    "qwen2": ("Qwen2Config", dict(rope_parameters={"rope_type": "default", "rope_theta": 700.0}), _qwen_as_published),
    "qwen3": ("Qwen3Config", dict(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 700.0}),
              _qwen_as_published),
    "phi3": ("Phi3Config", dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, rope_parameters={
        "rope_type": "default", "rope_theta": 400.0, "partial_rotary_factor": 0.5}), None),
    "gemma2": ("Gemma2Config", dict(GEMMA, attn_logit_softcapping=4.0, final_logit_softcapping=5.0), None),
    "gemma3": ("Gemma3TextConfig", dict(GEMMA, num_hidden_layers=4, sliding_window_pattern=3,
                                        rope_parameters=GEMMA3_ROPE), None),
    "gemma3-4.x-config": ("Gemma3TextConfig", dict(GEMMA, num_hidden_layers=4, sliding_window_pattern=3,
                                                   rope_parameters=GEMMA3_ROPE), _gemma3_4x),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Shapes this small run fastest on one thread: on a loaded machine a decode step here took 30x
    longer with two threads waiting on each other. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- building the folders -------------------------------------------------------------------------
def _perturb(model, seed: int) -> None:
    """Every parameter far from its init: matrices by N(0, 0.2) (peaked attention, logits far from
    uniform), vectors (norm weights, biases) by N(0, 0.5). A tied head moves with its embedding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 0.2))


def _write_tokenizer(folder: Path, n_ids: int) -> None:
    """A word-level tokenizer.json of ``n_ids`` ids (the folder's own tokenizer, as load_model reads it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n_ids)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def _save(folder: Path, cls: str, kw: dict, edit=None, seed: int = 0, n_ids: int | None = None) -> Path:
    """A perturbed transformers model of ``getattr(transformers, cls)(**BASE | kw)`` saved in
    ``folder``, its config.json passed through ``edit``, with a tokenizer of ``n_ids`` ids."""
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls)(**(BASE | kw))
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    _perturb(model, seed)
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    if edit is not None:
        file = folder / "config.json"
        file.write_text(json.dumps(edit(json.loads(file.read_text())), indent=1))
    _write_tokenizer(folder, n_ids if n_ids is not None else cfg.vocab_size - 8)
    return folder


def _theirs(folder: Path, attn: str = "eager", dtype=torch.float32):
    """transformers' own reading of ``folder`` (a fresh model: dynamic RoPE keeps state)."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn).eval()


def _ours(folder: Path, dtype=torch.float32):
    """``load_model("hf:DIR")``, checked to be our native Transformer (not the transformers
    fallback, which would match transformers trivially)."""
    model = load_model(f"hf:{folder}", dtype=dtype)
    assert isinstance(model, CausalLM) and model.config.arch == "transformer", type(model)
    return model


def _ids(vocab: int, n: int = T, batch: int = 2, seed: int = 1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _their_logits(model, ids):
    return model(ids).logits.float()


@torch.no_grad()
def _their_steps(model, ids, prompt: int):
    """transformers' cached decoding: the prompt at once, then one token at a time."""
    out = model(ids[:, :prompt], use_cache=True)
    cache, steps = out.cache, []
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t: t + 1], cache=cache, use_cache=True)
        cache = out.cache
        steps.append(out.logits.float())
    return torch.cat(steps, 1)


def _err(got, want) -> float:
    """max |got - want| / max |want| in float64."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def _assert_parity(got, want, what: str, tol: float = PARITY) -> None:
    assert torch.isfinite(got).all(), f"{what}: non-finite logits"
    err = _err(got, want)
    assert err <= tol, f"{what}: max|ours - ref| / max|ref| = {err:.2e} > {tol:.0e}"


def _poison(cache) -> None:
    """Every slot past each KV buffer's fill: NaN keys, huge values (a read of one shows)."""
    with torch.inference_mode():
        for buf in (cache.buffers() if hasattr(cache, "buffers") else []):
            buf.k[:, :, buf.length:] = float("nan")
            buf.v[:, :, buf.length:] = 1e6


def _ours_steps(model, ids, prompt: int, n: int = 1):
    """Our cached path: prefill ``prompt`` tokens (poisoned past them), then decode ``n`` at a time."""
    last, cache = model.prefill(ids[:, :prompt], reserve=ids.shape[1] - prompt + 4)
    _poison(cache)
    steps = [model.decode(ids[:, t: t + n], cache)[0] for t in range(prompt, ids.shape[1], n)]
    return last, torch.cat(steps, 1)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """One family built once: its folder, transformers' eager model and logits, our model and logits."""
    name = request.param
    cls, kw, edit = FAMILIES[name]
    folder = _save(tmp_path_factory.mktemp(name), cls, kw, edit)
    ref = _theirs(folder)
    ids = _ids(ref.config.vocab_size)
    ours = _ours(folder)
    with torch.no_grad():
        full = ours(ids)
    return SimpleNamespace(name=name, folder=folder, ref=ref, ids=ids, want=_their_logits(ref, ids),
                           ours=ours, full=full)


# -- 1-2. the full forward against transformers -----------------------------------------------------
def test_references_are_what_the_family_is_meant_to_test(family):
    """The transformers side is the case named (the windows, tying and layer pattern in effect), so
    a pass means what it says."""
    cfg = family.ref.config
    tied = family.ref.lm_head.weight is family.ref.model.embed_tokens.weight
    assert tied == (family.name.startswith("gemma") or family.name == "llama-tied")
    types = getattr(cfg, "layer_types", None) or []
    if family.name.startswith("gemma"):
        assert {"sliding_attention", "full_attention"} <= set(types) and cfg.sliding_window == W
    if family.name.startswith("gemma3"):
        assert types == ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
        rope = cfg.rope_parameters
        assert rope["full_attention"]["rope_type"] == "linear" and rope["sliding_attention"]["rope_theta"] == 100.0
    if family.name in ("qwen2", "qwen3", "mistral-no-window"):
        assert cfg.sliding_window is None and "sliding_attention" not in types
    assert family.want.std() > 0.5


def test_full_forward_matches_transformers(family):
    _assert_parity(family.full, family.want, f"{family.name} full forward vs transformers eager")
    if type(family.ref)._supports_sdpa:
        sdpa = _their_logits(_theirs(family.folder, "sdpa"), family.ids)
        _assert_parity(family.full, sdpa, f"{family.name} full forward vs transformers sdpa")


# -- 3. the cached paths against our full forward ------------------------------------------------------
def test_prefill_then_token_by_token_decode(family):
    last, steps = _ours_steps(family.ours, family.ids, P)
    _assert_parity(last, family.full[:, P - 1], f"{family.name} prefill last logits")
    _assert_parity(steps, family.full[:, P:], f"{family.name} decode one token at a time")
    full_last, _ = family.ours.prefill(family.ids)
    _assert_parity(full_last, family.full[:, -1], f"{family.name} prefill of all {T} tokens")


def test_multi_token_decode(family):
    _, steps = _ours_steps(family.ours, family.ids[:, : P + 27], P, n=3)
    _assert_parity(steps, family.full[:, P: P + 27], f"{family.name} decode three tokens at a time")


def test_chunked_prefill(family):
    """Chunks of 7 across windows of 6; the cache it leaves decodes on correctly."""
    m, ids = family.ours, family.ids
    last, cache = m.prefill(ids[:, : T - 3], chunk_size=7)
    _poison(cache)
    _assert_parity(last, family.full[:, T - 4], f"{family.name} chunked prefill (7)")
    _assert_parity(m.decode(ids[:, T - 3:], cache)[0], family.full[:, T - 3:], f"{family.name} decode after chunks")


def test_graph_safe_decode_step(family):
    """StaticDecoder: the step a CUDA graph captures, eagerly on the CPU, over a poisoned buffer."""
    from yoco_core.graphs import StaticDecoder, graph_capable

    m, ids = family.ours, family.ids
    _, cache = m.prefill(ids[:, :25], reserve=T - 25 + 2)
    _poison(cache)
    try:
        step = StaticDecoder(m, cache)
        out = torch.cat([step(ids[:, t: t + 1]) for t in range(25, T)], 1)
    except NotImplementedError as e:
        pytest.fail(f"{family.name}: StaticDecoder raises NotImplementedError ({e}); graph_capable={graph_capable(m)}")
    _assert_parity(out, family.full[:, 25:], f"{family.name} StaticDecoder steps")


# -- 4. bfloat16: as accurate as transformers' own ----------------------------------------------------
def test_bf16_is_as_accurate_as_transformers_bf16(family):
    """Both bf16 models (the same weights) against transformers' float32: ours' relative error at
    most MODEL_K times theirs, plus a small slack; the full forward and the cached path."""
    ours = _ours(family.folder, torch.bfloat16)
    theirs = _their_logits(_theirs(family.folder, dtype=torch.bfloat16), family.ids)
    with torch.no_grad():
        full = ours(family.ids)
    assert full.dtype == torch.float32
    _, steps = _ours_steps(ours, family.ids, P)
    for what, got, sl in (("full forward", full, slice(None)), ("prefill + decode", steps, slice(P, None))):
        e_ours, e_theirs = rel_error(got, family.want[:, sl]), rel_error(theirs[:, sl], family.want[:, sl])
        assert e_ours <= MODEL_K * e_theirs + BF16_SLACK, (f"{family.name} bf16 {what}: ours' error {e_ours:.3e} > "
                                                          f"{MODEL_K:g} x transformers' {e_theirs:.3e} + {BF16_SLACK}")


# -- 5. RoPE variants -------------------------------------------------------------------------------
STATIC_ROPE = {
    "linear": ({"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}, 512),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 1000.0}, 64),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16, "rope_theta": 1000.0}, 512),
}


def _llama_rope(tmp_path, rope: dict, max_pos: int) -> Path:
    return _save(tmp_path, "LlamaConfig", dict(num_hidden_layers=2, rope_parameters=dict(rope),
                                               max_position_embeddings=max_pos))


@pytest.mark.parametrize("kind", list(STATIC_ROPE))
def test_static_rope_scalings_match_transformers(tmp_path, kind):
    """linear / yarn / llama3 (the frequencies fixed): full forward and the cached path."""
    folder = _llama_rope(tmp_path, *STATIC_ROPE[kind])
    ref = _theirs(folder)
    ids = _ids(ref.config.vocab_size)
    want = _their_logits(ref, ids)
    plain = _llama_rope(tmp_path / "plain", {"rope_type": "default", "rope_theta": 1000.0}, 512)
    plain = _their_logits(_theirs(plain), ids)
    assert _err(plain, want) > 1e-2, "the scaling must matter at these positions"
    ours = _ours(folder)
    with torch.no_grad():
        _assert_parity(ours(ids), want, f"llama rope {kind} full forward")
    last, steps = _ours_steps(ours, ids, 20)
    _assert_parity(last, want[:, 19], f"llama rope {kind} prefill")
    _assert_parity(steps, want[:, 20:], f"llama rope {kind} decode")


def _full_and_crossing(folder: Path, ours, what: str, short: int, threshold: int = 16) -> None:
    """Full forwards of ``short`` (below ``threshold``) and 34 tokens (above), each against a fresh
    transformers model; then prefills of 10 and 20 tokens decoded one token at a time to 34 against
    transformers' own cached decoding, which (from 10) differs from its full forward."""
    ids = _ids(BASE["vocab_size"], 34)
    for n in (short, 34):
        with torch.no_grad():
            _assert_parity(ours(ids[:, :n]), _their_logits(_theirs(folder), ids[:, :n]),
                           f"{what} full forward of {n} (threshold {threshold})")
    for prompt in (10, 20):
        want = _their_steps(_theirs(folder), ids, prompt)
        if prompt < threshold:
            assert _err(want, _their_logits(_theirs(folder), ids)[:, prompt:]) > 1e-3, "crossing must matter"
        last, steps = _ours_steps(ours, ids, prompt)
        _assert_parity(last, _their_logits(_theirs(folder), ids[:, :prompt])[:, -1], f"{what}: prefill {prompt}")
        _assert_parity(steps, want, f"{what}: prefill {prompt}, decode to 34 vs transformers' cached decoding")


def test_dynamic_rope_matches_transformers_below_above_and_across(tmp_path):
    """Dynamic NTK (threshold: max_position_embeddings = 16, which it is made to run past): its
    frequencies grow with the longest length a transformers model has seen (so each reference is a
    fresh model) and, decoding, each new token's keys get the frequencies of its step while the
    cached ones keep theirs."""
    folder = _llama_rope(tmp_path, {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000.0}, 16)
    _full_and_crossing(folder, _ours(folder), "llama rope dynamic", short=12)


LONGROPE = {"rope_type": "longrope", "rope_theta": 1000.0, "partial_rotary_factor": 0.5,
            "original_max_position_embeddings": 16,
            "short_factor": [1.0, 1.3, 1.7, 2.2], "long_factor": [1.5, 3.0, 6.0, 12.0]}


def test_phi3_longrope_short_long_and_across(tmp_path):
    """phi3 longrope (original 16, max 64: attention factor sqrt(1 + ln 4 / ln 16)): the short
    factors up to 16 positions, the long ones past them, chosen per forward call by transformers
    (decoding across 16, the cached short-regime keys are kept)."""
    folder = _save(tmp_path, "Phi3Config", dict(num_hidden_layers=2, pad_token_id=0, bos_token_id=1,
                                                 eos_token_id=2, max_position_embeddings=64,
                                                 original_max_position_embeddings=16, rope_parameters=dict(LONGROPE)))
    _full_and_crossing(folder, _ours(folder), "phi3 longrope", short=14)


# -- 6. never silently wrong ---------------------------------------------------------------------------
def _one_line_refusal(folder: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(f"hf:{folder}", dtype=torch.float32)
    msg = str(e.value)
    assert "\n" not in msg and any(n in msg for n in needles), msg
    return msg


def _edit_config(folder: Path, **changes) -> Path:
    file = folder / "config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))
    return folder


@pytest.mark.parametrize("key,value", [("sliding_window", 8), ("logits_scaling", 2.0)])
def test_a_llama_config_key_llama_does_not_read_is_refused(tmp_path, key, value):
    """A key that would change the math, which Llama does not read (a window edited in, an unknown
    scaling): refused naming it, never loaded as plain Llama."""
    folder = _save(tmp_path, "LlamaConfig", dict(num_hidden_layers=2))
    _one_line_refusal(_edit_config(folder, **{key: value}), key)


def test_a_tokenizer_with_more_ids_than_the_vocabulary_is_refused(tmp_path):
    folder = _save(tmp_path, "LlamaConfig", dict(num_hidden_layers=2), n_ids=BASE["vocab_size"] + 10)
    msg = _one_line_refusal(folder, "tokenizer")
    assert str(BASE["vocab_size"] + 10) in msg and str(BASE["vocab_size"]) in msg


QWEN2_WINDOWS = {
    "max_window_layers": dict(use_sliding_window=True, sliding_window=W, max_window_layers=1),
    "layer_types": dict(use_sliding_window=True, sliding_window=W, max_window_layers=3,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("case", list(QWEN2_WINDOWS))
def test_qwen2_with_sliding_windows_is_exact_or_refused(tmp_path, case):
    """use_sliding_window true: windows on the layers transformers puts them on (from
    max_window_layers, or layer_types where given), or a one-line refusal naming the key; never
    different logits."""
    kw = dict(QWEN2_WINDOWS[case], rope_parameters={"rope_type": "default", "rope_theta": 700.0})
    folder = _save(tmp_path / "w", "Qwen2Config", kw)
    ref = _theirs(folder)
    assert "sliding_attention" in ref.config.layer_types and "full_attention" in ref.config.layer_types
    ids = _ids(ref.config.vocab_size)
    want = _their_logits(ref, ids)
    plain = {k: v for k, v in kw.items() if k != "layer_types"} | {"use_sliding_window": False}
    no_window = _their_logits(_theirs(_save(tmp_path / "full", "Qwen2Config", plain)), ids)
    assert _err(no_window, want) > 1e-2, "the windows must matter at this length"
    try:
        ours = _ours(folder)
    except CheckpointError as e:
        msg = str(e)
        assert "\n" not in msg and any(k in msg for k in ("use_sliding_window", "sliding_window",
                                                           "max_window_layers", "layer_types")), msg
        return
    with torch.no_grad():
        _assert_parity(ours(ids), want, f"qwen2 windows ({case}) full forward")
    _, steps = _ours_steps(ours, ids, P)
    _assert_parity(steps, want[:, P:], f"qwen2 windows ({case}) decode")
