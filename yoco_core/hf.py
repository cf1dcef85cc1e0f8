"""Foreign checkpoints: Hugging Face Llama, flash-linear-attention YOCO, and microsoft/unilm YOCO.

Everything is read from local files only (no hub, no ``trust_remote_code``): ``config.json`` or
``params.json`` as JSON, weights as safetensors or ``torch.load(weights_only=True)``.

``load_model("hf:PATH")`` reads a transformers directory and dispatches on ``model_type``:

* ``llama``: into the ``Transformer`` baseline, weight for weight (HF Llama already uses the
  rotate-half RoPE layout, LLaMA-3 ``rope_scaling`` maps onto ``config.rope_scaling``).
* ``yoco``: a flash-linear-attention ``YOCOForCausalLM`` directory (``fla.models.yoco``) with a
  ``gated_retention`` or ``swa`` self-decoder, into ``YOCO``.

``load_model("unilm:PATH")`` reads an official YOCO checkpoint (microsoft/unilm, ``YOCO/``):
``params.json`` (``YOCOArgs``: dim, n_layers, hidden_dim, n_self_heads, n_attn_heads,
n_attn_kv_heads, vocab_size, rope_theta, norm_eps, sliding_window) plus a state dict file.

Key mappings (ours <- theirs)::

    HF Llama                                    ours (Transformer)
    model.embed_tokens.weight                   embed.weight
    model.layers.N.input_layernorm.weight       layers.N.attn_norm.weight
    model.layers.N.self_attn.{q,k,v,o}_proj     layers.N.attn.{q,k,v,o}_proj
    model.layers.N.post_attention_layernorm     layers.N.mlp_norm.weight
    model.layers.N.mlp.{gate,up,down}_proj      layers.N.mlp.{gate,up,down}_proj
    model.norm.weight / lm_head.weight          norm.weight / lm_head.weight

    FLA YOCO                                    ours (YOCO)
    model.embeddings.weight                     embed.weight            (x sqrt(hidden), see below)
    model.self_layers.N.attn_norm / mlp_norm    self_layers.N.attn_norm / mlp_norm
    model.self_layers.N.attn.{q,k}_proj         self_layers.N.attn.{q,k}_proj  (gRet: rows permuted)
    model.self_layers.N.attn.{v,g,o}_proj       self_layers.N.attn.{v,g,o}_proj
    model.self_layers.N.attn.gk_proj            self_layers.N.attn.gt_proj
    model.self_layers.N.mlp.{gate,up,down}_proj self_layers.N.mlp.{gate,up,down}_proj
    model.shared_kv_builder.kv_norm             kv_norm
    model.shared_kv_builder.{k,v}_proj          {k,v}_proj              (k rows permuted)
    model.cross_layers.N.attn.q_proj            cross_layers.N.attn.q_proj  (rows permuted)
    model.cross_layers.N.attn.o_proj            cross_layers.N.attn.o_proj
    model.cross_layers.N.{attn_norm,mlp_norm,mlp.*}  cross_layers.N.{same}
    model.norm.weight / lm_head.weight          norm.weight / lm_head.weight

    unilm YOCO                                          ours (YOCO)
    embed_tokens.weight                                 embed.weight     (x sqrt(dim), see below)
    self_decoder.layers.N.mixer.{q,k}_proj              self_layers.N.attn.{q,k}_proj (rows permuted)
    self_decoder.layers.N.mixer.{v,g,gt}_proj           self_layers.N.attn.{v,g,gt}_proj
    self_decoder.layers.N.mixer.out_proj                self_layers.N.attn.o_proj
    *.layers.N.mixer_layer_norm / final_layer_norm      *.N.attn_norm / mlp_norm
    *.layers.N.ffn.fc1 / ffn.gate / ffn.fc2             *.N.mlp.gate_proj / up_proj / down_proj
                                                        (their swiglu(fc1(x), gate(x)) = silu(fc1 x) * gate x)
    cross_decoder.kv_layer_norm                         kv_norm
    cross_decoder.{k,v}_proj                            {k,v}_proj       (k rows permuted)
    cross_decoder.layers.N.mixer.q_proj / out_proj      cross_layers.N.attn.q_proj (permuted) / o_proj
    layer_norm / output_projection                      norm / lm_head

Conversions that keep the logits exact:

* **Interleaved RoPE.** FLA's gated retention and global KV / cross-attention, and every unilm
  mixer, rotate interleaved pairs (2i, 2i+1); ours rotates (i, i + d/2). Permuting the output rows of
  each head's q and k projections to ``[0, 2, 4, ..., 1, 3, 5, ...]`` turns one into the other
  (q.k is unchanged because q and k get the same permutation; v is untouched).
* **Embedding scale.** Both multiply the token embeddings by ``sqrt(hidden)``: kept as
  ``ModelConfig.embed_scale`` (tied or untied head alike).
* **RoPE angles.** unilm (and FLA with ``rope_inv_freq: yoco``) use ``1 / theta ** linspace(0, 1,
  d/2)`` instead of LLaMA's ``1 / theta ** (2i / d)``: ``rope_scaling={"rope_type": "yoco"}``.

What is refused (one-line ``CheckpointError``): Llama biases, a ``head_dim`` other than
hidden / heads, a non-SiLU activation, rope scalings other than llama3; FLA YOCO with a
``gated_deltanet`` self-decoder, an unequal self/cross layer split, attention residuals
(``attnres_block_size``), ``qk_norm``, q/k/v biases, a windowed cross-decoder, SWA with GQA, or
different RoPE settings for the self- and cross-decoder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import CheckpointError, load_state, read_state_dict, register_loader
from .config import ModelConfig
from .model import CausalLM, build_model

__all__ = ["load_hf", "load_unilm", "HFTokenizer", "interleaved_to_half", "BYTE_TOKENIZER_DIR",
           "llama_config", "fla_yoco_config", "unilm_config"]

BYTE_TOKENIZER_DIR = Path(__file__).parent / "data" / "byte_tokenizer"


# -- tokenizer --------------------------------------------------------------------------------
class HFTokenizer:
    """A local ``tokenizer.json`` (the ``tokenizers`` library) behind our ``Tokenizer`` protocol."""

    def __init__(self, folder):
        from tokenizers import Tokenizer as _Tok

        folder = Path(folder)
        self.path = folder
        self.name = f"hf:{folder}"
        try:
            self._tok = _Tok.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            raise CheckpointError(f"cannot read {folder / 'tokenizer.json'}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        special = {}
        for f in ("tokenizer_config.json", "special_tokens_map.json", "config.json"):
            p = folder / f
            if p.is_file():
                try:
                    special.update({k: v for k, v in json.loads(p.read_text()).items() if k not in special})
                except json.JSONDecodeError:
                    pass

        def tok_id(key, id_key, fallback):
            v = special.get(id_key)
            if isinstance(v, list):
                v = v[0] if v else None
            if isinstance(v, int):
                return v
            t = special.get(key)
            if isinstance(t, dict):
                t = t.get("content")
            if isinstance(t, str) and self._tok.token_to_id(t) is not None:
                return self._tok.token_to_id(t)
            return fallback

        self.eos_id = tok_id("eos_token", "eos_token_id", None)
        self.bos_id = tok_id("bos_token", "bos_token_id", self.eos_id)
        self.pad_id = tok_id("pad_token", "pad_token_id", self.eos_id)
        if self.eos_id is None:
            self.eos_id = self.vocab_size - 1 if self.bos_id is None else self.bos_id
        if self.bos_id is None:
            self.bos_id = self.eos_id
        if self.pad_id is None:
            self.pad_id = self.eos_id

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


# -- small helpers ----------------------------------------------------------------------------
def interleaved_to_half(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of a q/k projection ``[H * head_dim, in]`` reordered per head from interleaved RoPE
    pairs (2i, 2i+1) to rotate-half pairs (i, i + head_dim/2)."""
    if w.shape[0] % head_dim or head_dim % 2:
        raise CheckpointError(f"cannot split {w.shape[0]} rows into heads of {head_dim}")
    perm = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    h = w.shape[0] // head_dim
    return w.reshape(h, head_dim, -1)[:, perm].reshape(w.shape)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return data


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All safetensors shards of a folder (or one .bin / .pt state dict), merged."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        shards = sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not shards:
        raise CheckpointError(f"no weights (.safetensors, .bin or .pt) in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in shards:
        state.update(read_state_dict(f))
    return state


def _tokenizer_for(folder: Path):
    return HFTokenizer(folder) if (folder / "tokenizer.json").is_file() else None


def _finish(cfg: ModelConfig, state: dict, source: str, device, dtype, tokenizer=None,
            embed_scale: float = 1.0) -> CausalLM:
    """Build ``cfg`` on ``device`` and load ``state`` (our names) into it."""
    if embed_scale != 1.0:
        cfg = cfg.replace(embed_scale=embed_scale)
    # allocated once in the target dtype (see checkpoint._load_dir); the row permutations are exact
    model = build_model(cfg, device="meta", dtype=dtype).to_empty(device=device)
    load_state(model, state, source)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model = model.eval()
    if tokenizer is not None:
        model.tokenizer = tokenizer
        model.config.tokenizer = tokenizer.name
    return model


def _check_known(state: dict, used: set, source: str) -> None:
    extra = sorted(k for k in set(state) - used if not k.endswith("rotary_emb.inv_freq") and "rotary" not in k)
    if extra:
        raise CheckpointError(f"{source}: {len(extra)} tensors this loader does not know (e.g. {extra[0]})")


class _Mapper:
    """Collects ``ours <- theirs`` with a clear error for a missing tensor."""

    def __init__(self, state: dict, source: str):
        self.state, self.source, self.used, self.out = state, source, set(), {}

    def take(self, theirs: str) -> torch.Tensor:
        if theirs not in self.state:
            raise CheckpointError(f"{self.source}: missing tensor {theirs}")
        self.used.add(theirs)
        return self.state[theirs]

    def put(self, ours: str, theirs: str, head_dim: int | None = None) -> None:
        w = self.take(theirs)
        self.out[ours] = interleaved_to_half(w, head_dim) if head_dim else w

    def has(self, theirs: str) -> bool:
        return theirs in self.state


# -- HF Llama ---------------------------------------------------------------------------------
def _rope_of(hf: dict, source: str) -> tuple[float, dict | None]:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or None
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if scaling is None and params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            return theta, None
        if kind != "llama3":
            raise CheckpointError(f"{source}: rope scaling {kind!r} is not supported (supported: llama3)")
        keep = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        scaling = {k: scaling[k] for k in keep if k in scaling}
        scaling["rope_type"] = "llama3"
        return theta, scaling
    return theta, None


def llama_config(hf: dict, source: str, name: str = "hf-llama") -> ModelConfig:
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise CheckpointError(f"{source}: {key}=true is not supported (our Transformer has no biases)")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (only silu)")
    try:
        dim, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        layers, ffn, vocab = int(hf["num_hidden_layers"]), int(hf["intermediate_size"]), int(hf["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: config lacks {e}") from None
    kv = int(hf.get("num_key_value_heads") or heads)
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != dim:
        raise CheckpointError(f"{source}: head_dim {head_dim} differs from hidden_size / num_attention_heads "
                              f"= {dim // heads}; not supported")
    theta, scaling = _rope_of(hf, source)
    try:
        return ModelConfig(
            name=name, arch="transformer", vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads,
            n_kv_heads=kv, ffn_dim=ffn, rope_theta=theta, rope_scaling=scaling,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(hf.get("max_position_embeddings") or 1 << 20),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _load_llama(folder: Path, hf: dict, device, dtype) -> CausalLM:
    source = str(folder)
    cfg = llama_config(hf, source, name=f"hf:{folder.name}")
    state = _read_weights(folder)
    state = {k[len("model."):] if k.startswith("model.") and not k.startswith("model.model.") else k: v
             for k, v in state.items()}
    m = _Mapper(state, source)
    m.put("embed.weight", "embed_tokens.weight")
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"layers.{i}."
        m.put(q + "attn_norm.weight", p + "input_layernorm.weight")
        m.put(q + "mlp_norm.weight", p + "post_attention_layernorm.weight")
        for n in ("q", "k", "v", "o"):
            m.put(q + f"attn.{n}_proj.weight", p + f"self_attn.{n}_proj.weight")
        for n in ("gate", "up", "down"):
            m.put(q + f"mlp.{n}_proj.weight", p + f"mlp.{n}_proj.weight")
    m.put("norm.weight", "norm.weight")
    if m.has("lm_head.weight") and not cfg.tie_embeddings:
        m.put("lm_head.weight", "lm_head.weight")
    elif m.has("lm_head.weight"):
        m.take("lm_head.weight")
    _check_known(state, m.used, source)
    return _finish(cfg, m.out, source, device, dtype, _tokenizer_for(folder))


# -- flash-linear-attention YOCO ---------------------------------------------------------------
def fla_yoco_config(hf: dict, source: str, name: str = "fla-yoco") -> tuple[ModelConfig, dict]:
    """Our config for an FLA ``YOCOConfig`` dict, plus facts the weight mapping needs."""
    sd = dict(hf.get("self_decoder_attn") or {})
    cd = dict(hf.get("cross_decoder_attn") or {})
    kind = sd.get("type", "gated_deltanet")
    if kind not in ("gated_retention", "swa"):
        raise CheckpointError(f"{source}: FLA YOCO self-decoder {kind!r} is not supported (gated_retention or swa)")
    if hf.get("attnres_block_size") is not None:
        raise CheckpointError(f"{source}: attention residuals (attnres_block_size) are not supported")
    if cd.get("qk_norm") or cd.get("qkv_bias") or sd.get("qkv_bias") or sd.get("qk_norm"):
        raise CheckpointError(f"{source}: qk_norm / qkv_bias are not supported")
    if cd.get("window_size") is not None:
        raise CheckpointError(f"{source}: a windowed cross-decoder is not supported")
    if hf.get("hidden_act", "swish") not in ("swish", "silu"):
        raise CheckpointError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported")
    dim = int(hf.get("hidden_size", 2048))
    n_total = int(hf.get("num_hidden_layers", 21))
    n_self = int(hf.get("num_self_decoder_layers", 10))
    if n_total != 2 * n_self:
        raise CheckpointError(f"{source}: {n_self} self-decoder and {n_total - n_self} cross-decoder layers; "
                              "our YOCO needs an equal split")
    self_heads = int(sd.get("num_heads", 6))
    heads = int(cd.get("num_heads", 32))
    kv_heads = int(cd.get("num_kv_heads") or heads)
    if kind == "swa" and int(sd.get("num_v_heads") or self_heads) != self_heads:
        raise CheckpointError(f"{source}: SWA self-decoder with grouped KV heads is not supported")
    sd_theta, cd_theta = float(sd.get("rope_theta", 10000.0)), float(cd.get("rope_theta", 10000.0))
    sd_freq = "fla" if kind == "swa" else sd.get("rope_inv_freq", "fla")
    cd_freq = cd.get("rope_inv_freq", "fla")
    if sd_theta != cd_theta or sd_freq != cd_freq:
        raise CheckpointError(f"{source}: self- and cross-decoder RoPE differ (theta {sd_theta:g}/{cd_theta:g}, "
                              f"angles {sd_freq}/{cd_freq}); our YOCO uses one RoPE")
    scaling = None
    if cd_freq == "yoco":
        scaling = {"rope_type": "yoco"}
    try:
        cfg = ModelConfig(
            name=name, arch="yoco", self_decoder="gret" if kind == "gated_retention" else "swa",
            vocab_size=int(hf.get("vocab_size", 32000)), dim=dim, n_layers=n_total, n_heads=heads,
            n_kv_heads=kv_heads, n_self_heads=self_heads, ffn_dim=int(hf.get("intermediate_size") or 1),
            window=int(sd.get("window_size") or 1024), rope_theta=cd_theta, rope_scaling=scaling,
            norm_eps=float(hf.get("norm_eps", 1e-6)),
            gate_logit_normalizer=float(sd.get("gate_logit_normalizer", 16.0)),
            max_seq_len=1 << 20, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cfg, {"embed_scale": math.sqrt(dim)}


def _load_fla_yoco(folder: Path, hf: dict, device, dtype) -> CausalLM:
    source = str(folder)
    cfg, extra = fla_yoco_config(hf, source, name=f"fla:{folder.name}")
    state = _read_weights(folder)
    gate = state.get("model.self_layers.0.mlp.gate_proj.weight")
    if gate is None:
        raise CheckpointError(f"{source}: missing tensor model.self_layers.0.mlp.gate_proj.weight")
    cfg = cfg.replace(ffn_dim=int(gate.shape[0]))
    m = _Mapper(state, source)
    half, sdh, hd = cfg.n_layers // 2, cfg.self_head_dim, cfg.head_dim
    m.put("embed.weight", "model.embeddings.weight")
    def norms_and_mlp(p: str, q: str) -> None:   # the same names in FLA and here, both decoders
        for n in ("attn_norm", "mlp_norm"):
            m.put(q + f"{n}.weight", p + f"{n}.weight")
        for n in ("gate", "up", "down"):
            m.put(q + f"mlp.{n}_proj.weight", p + f"mlp.{n}_proj.weight")

    for i in range(half):
        p, q = f"model.self_layers.{i}.", f"self_layers.{i}."
        norms_and_mlp(p, q)
        if cfg.self_decoder == "gret":       # interleaved RoPE in FLA's YOCOGatedRetention
            m.put(q + "attn.q_proj.weight", p + "attn.q_proj.weight", sdh)
            m.put(q + "attn.k_proj.weight", p + "attn.k_proj.weight", sdh)
            for n in ("v", "g", "o"):
                m.put(q + f"attn.{n}_proj.weight", p + f"attn.{n}_proj.weight")
            m.put(q + "attn.gt_proj.weight", p + "attn.gk_proj.weight")
        else:                                # fla.layers.attn.Attention: rotate-half already
            for n in ("q", "k", "v", "o"):
                m.put(q + f"attn.{n}_proj.weight", p + f"attn.{n}_proj.weight")
    m.put("kv_norm.weight", "model.shared_kv_builder.kv_norm.weight")
    m.put("k_proj.weight", "model.shared_kv_builder.k_proj.weight", hd)
    m.put("v_proj.weight", "model.shared_kv_builder.v_proj.weight")
    for i in range(half):
        p, q = f"model.cross_layers.{i}.", f"cross_layers.{i}."
        norms_and_mlp(p, q)
        m.put(q + "attn.q_proj.weight", p + "attn.q_proj.weight", hd)
        m.put(q + "attn.o_proj.weight", p + "attn.o_proj.weight")
    m.put("norm.weight", "model.norm.weight")
    if not cfg.tie_embeddings:
        m.put("lm_head.weight", "lm_head.weight")
    elif m.has("lm_head.weight"):
        m.take("lm_head.weight")
    _check_known(state, m.used, source)
    return _finish(cfg, m.out, source, device, dtype, _tokenizer_for(folder), extra["embed_scale"])


def load_hf(path: str, device="cpu", dtype=None) -> CausalLM:
    """``hf:PATH``: a local transformers directory (Llama, or FLA YOCO)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"hf:{path}: not a directory (only local paths; no hub is reachable)")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"hf:{path}: no config.json")
    hf = _read_json(cfg_file)
    kind = hf.get("model_type")
    dtype = dtype or torch.float32
    if kind == "llama":
        return _load_llama(folder, hf, device, dtype)
    if kind == "yoco":
        return _load_fla_yoco(folder, hf, device, dtype)
    raise CheckpointError(f"hf:{path}: model_type {kind!r} is not supported (llama or yoco)")


# -- microsoft/unilm YOCO ---------------------------------------------------------------------
_UNILM_PREFIXES = ("decoder.model.", "model.", "decoder.")


def unilm_config(params: dict, vocab: int, tied: bool, source: str, name: str = "unilm-yoco") -> ModelConfig:
    try:
        dim, layers = int(params["dim"]), int(params["n_layers"])
        heads = int(params["n_attn_heads"])
        cfg = ModelConfig(
            name=name, arch="yoco", self_decoder="swa" if params.get("sliding_window") else "gret",
            vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads,
            n_kv_heads=int(params.get("n_attn_kv_heads") or heads),
            n_self_heads=int(params["n_self_heads"]), ffn_dim=int(params["hidden_dim"]),
            window=int(params.get("sliding_window") or 1024),
            rope_theta=float(params.get("rope_theta", 10000.0)), rope_scaling={"rope_type": "yoco"},
            norm_eps=float(params.get("norm_eps", 1e-5)), gate_logit_normalizer=16.0,
            max_seq_len=1 << 20, tie_embeddings=tied,
        )
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: params.json lacks {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return cfg


def load_unilm(path: str, device="cpu", dtype=None) -> CausalLM:
    """``unilm:PATH``: a folder with ``params.json`` and one state dict (.pt/.bin/.safetensors)."""
    folder = Path(path).expanduser()
    source = f"unilm:{path}"
    if not (folder / "params.json").is_file():
        raise CheckpointError(f"{source}: no params.json (microsoft/unilm YOCOArgs)")
    params = _read_json(folder / "params.json")
    raw = _read_weights(folder)
    state = {}
    for k, v in raw.items():
        for pre in _UNILM_PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
                break
        state[k] = v
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{source}: missing tensor embed_tokens.weight")
    tied = "output_projection.weight" not in state
    cfg = unilm_config(params, int(state["embed_tokens.weight"].shape[0]), tied, source,
                       name=f"unilm:{folder.name}")
    m = _Mapper(state, source)
    half, sdh, hd = cfg.n_layers // 2, cfg.self_head_dim, cfg.head_dim

    def block(theirs: str, ours: str) -> None:
        m.put(ours + "attn_norm.weight", theirs + "mixer_layer_norm.weight")
        m.put(ours + "mlp_norm.weight", theirs + "final_layer_norm.weight")
        m.put(ours + "mlp.gate_proj.weight", theirs + "ffn.fc1.weight")
        m.put(ours + "mlp.up_proj.weight", theirs + "ffn.gate.weight")
        m.put(ours + "mlp.down_proj.weight", theirs + "ffn.fc2.weight")

    m.put("embed.weight", "embed_tokens.weight")
    for i in range(half):
        p, q = f"self_decoder.layers.{i}.", f"self_layers.{i}."
        block(p, q)
        m.put(q + "attn.q_proj.weight", p + "mixer.q_proj.weight", sdh)
        m.put(q + "attn.k_proj.weight", p + "mixer.k_proj.weight", sdh)
        m.put(q + "attn.v_proj.weight", p + "mixer.v_proj.weight")
        m.put(q + "attn.o_proj.weight", p + "mixer.out_proj.weight")
        if cfg.self_decoder == "gret":
            m.put(q + "attn.g_proj.weight", p + "mixer.g_proj.weight")
            m.put(q + "attn.gt_proj.weight", p + "mixer.gt_proj.weight")
    m.put("kv_norm.weight", "cross_decoder.kv_layer_norm.weight")
    m.put("k_proj.weight", "cross_decoder.k_proj.weight", hd)
    m.put("v_proj.weight", "cross_decoder.v_proj.weight")
    for i in range(half):
        p, q = f"cross_decoder.layers.{i}.", f"cross_layers.{i}."
        block(p, q)
        m.put(q + "attn.q_proj.weight", p + "mixer.q_proj.weight", hd)
        m.put(q + "attn.o_proj.weight", p + "mixer.out_proj.weight")
    m.put("norm.weight", "layer_norm.weight")
    if not tied:
        m.put("lm_head.weight", "output_projection.weight")
    _check_known(state, m.used, source)
    return _finish(cfg, m.out, source, device, dtype or torch.float32, None, math.sqrt(cfg.dim))


register_loader("hf", load_hf)
register_loader("unilm", load_unilm)
