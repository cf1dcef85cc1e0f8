"""Our models and the peers (HF Llama, fla's YOCO) behind one small interface, ``Runner``:
``prefill``, ``decode``, ``cache_nbytes``, ``random_cache`` (decode-only cells, ours only),
``prepare_decode`` / ``end_cell`` / ``close`` around a cell. ``build_runner`` makes the runner of one
(arch, size) with random weights; ``size_config`` is the same-shaped preset the cost model uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ModelConfig, get_config
from ..graphs import make_decoder
from ..model import build_model
from .analytic import effective_chunk
from .hardware import release

NATIVE_ARCHS = ("yoco", "transformer")          # our models (their caches; decode-only cells)
PEER_ARCHS = ("hf", "fla")                       # the reference libraries, same shapes
ARCHS = NATIVE_ARCHS + PEER_ARCHS


class PeerUnavailable(Exception):
    """A peer arch whose package (or device) is missing; the message is one line."""


def tensor_nbytes(obj, _seen: set | None = None, _depth: int = 0) -> int:
    """Bytes of the distinct tensor storages reachable from a cache object (lists, tuples,
    dicts and plain objects' attributes, a few levels deep): the cache size of a peer."""
    seen = set() if _seen is None else _seen
    if _depth > 8 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        st = obj.untyped_storage()
        key = ("storage", st.data_ptr(), obj.device)
        if key in seen:
            return 0
        seen.add(key)
        return st.nbytes()
    if isinstance(obj, torch.nn.Module) or isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return 0
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    else:
        return 0
    return sum(tensor_nbytes(x, seen, _depth + 1) for x in items)


@dataclass
class Runner:
    """A model ready to be profiled: ``prefill(ids, chunk) -> (logits [B, V], cache)``,
    ``decode(ids [B, 1], cache) -> (logits [B, V], cache)``, ``cache_nbytes(cache)``.
    ``config`` is the same-shaped ``ModelConfig`` the analytic model uses."""
    arch: str
    config: ModelConfig
    model: Any
    device: torch.device
    params: int
    extra: dict = field(default_factory=dict)

    def prefill(self, ids, chunk_size: int | None, reserve: int):
        raise NotImplementedError

    def decode(self, ids, cache):
        raise NotImplementedError

    def cache_nbytes(self, cache) -> int:
        return tensor_nbytes(cache)

    def prepare_decode(self, cache) -> None:
        """Anything to set up for decoding ``cache`` before the timed steps (ours: the CUDA graph)."""

    def random_cache(self, batch: int, ctx: int, reserve: int, seed: int = 0):
        """The cache a prefill of ``ctx`` tokens would leave (room for ``reserve`` more), holding
        random values instead (``Cache.fill_random``), for ``decode_only`` cells; ours only."""
        raise NotImplementedError(f"{self.arch}: decode-only cells need one of our models (yoco, transformer)")

    def end_cell(self) -> None:
        """Drop what the cell's decoding still holds (ours: its cache and the graph's memory)."""

    def close(self) -> None:
        self.end_cell()
        self.model = None
        release(self.device)


class NativeRunner(Runner):
    """Our models; decoding goes through ``make_decoder`` (a CUDA graph on the GPU), built (and
    captured) for each cache before its timed decode steps."""

    _decoder = None

    def prefill(self, ids, chunk_size, reserve):
        self._decoder = None
        return self.model.prefill(ids, chunk_size=chunk_size, reserve=reserve)

    def prepare_decode(self, cache) -> None:
        """Build (and on CUDA capture) the decoder for ``cache`` outside the timed steps."""
        self._decoder = make_decoder(self.model, cache)

    def random_cache(self, batch, ctx, reserve, seed=0):
        self._decoder = None
        cache = self.model.new_cache(batch, ctx + reserve)
        cache.fill_random(ctx, torch.Generator(device=self.device).manual_seed(seed))
        return cache

    def decode(self, ids, cache):
        if self._decoder is None or self._decoder.cache is not cache:
            self.prepare_decode(cache)
        return self._decoder(ids)[:, -1], cache

    def end_cell(self) -> None:
        self._decoder = None

    def cache_nbytes(self, cache) -> int:
        return cache.nbytes()


class HFRunner(Runner):
    """HF-style models (``transformers`` Llama, fla's YOCO): forward with a cache object."""

    def _call(self, ids, cache, **kw):
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
        return out.logits[:, -1], out.past_key_values

    @torch.inference_mode()
    def prefill(self, ids, chunk_size, reserve):
        T = ids.shape[1]
        step = effective_chunk(chunk_size, T) or T
        cache = logits = None
        for s in range(0, T, step):
            logits, cache = self._call(ids[:, s: s + step], cache, logits_to_keep=1,
                                       **self.extra.get("prefill_kwargs", {}))
        return logits, cache

    @torch.inference_mode()
    def decode(self, ids, cache):
        return self._call(ids, cache)


def size_config(arch: str, size: str, self_decoder: str = "gret") -> ModelConfig:
    """The preset a (arch, size) cell runs; the peers use their same-shaped twin
    (hf: ``transformer-<size>``, fla: ``yoco-<size>`` with gRet)."""
    if arch in ("transformer", "hf"):
        return get_config(f"transformer-{size}")
    if arch == "fla" or self_decoder == "gret":
        return get_config(f"yoco-{size}")
    return get_config(f"yoco-swa-{size}")


def model_name(arch: str, size: str, self_decoder: str = "gret") -> str:
    """The ``model`` column: the preset name, or the peer's name (``hf-llama-3b``, ``fla-yoco-3b``)."""
    if arch == "hf":
        return f"hf-llama-{size}"
    if arch == "fla":
        return f"fla-yoco-{size}"
    return size_config(arch, size, self_decoder).name


def check_peer(arch: str, device=None) -> None:
    """Raise ``PeerUnavailable`` (one line) when a peer arch cannot run here."""
    if arch == "hf":
        try:
            import transformers  # noqa: F401
            from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401
        except Exception:
            raise PeerUnavailable("arch hf needs transformers (pip install 'yoco[hf]' or pip install transformers)") from None
    elif arch == "fla":
        try:
            import fla  # noqa: F401
        except Exception:
            raise PeerUnavailable("arch fla needs flash-linear-attention (pip install flash-linear-attention)") from None
        try:
            from fla.models.yoco import YOCOConfig, YOCOForCausalLM  # noqa: F401
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PeerUnavailable("arch fla needs a flash-linear-attention with fla.models.yoco "
                                  f"(import failed: {first})") from None
        if device is not None and torch.device(device).type != "cuda":
            raise PeerUnavailable("arch fla runs Triton kernels and needs --device cuda")


def _hf_from_config(cls, cfg, device, dtype):
    with torch.device(device):
        try:
            model = cls._from_config(cfg, dtype=dtype)            # transformers >= 4.56
        except TypeError:
            model = cls._from_config(cfg, torch_dtype=dtype)      # older releases
    return model.to(device=device, dtype=dtype).eval()


def _count_params(model) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def build_runner(arch: str, size: str, device, dtype: torch.dtype, max_tokens: int,
                 self_decoder: str = "gret", seed: int = 0) -> Runner:
    """Build the model of one (arch, size) on ``device`` in ``dtype`` with random weights (a fixed
    seed) and room for ``max_tokens`` positions (context + decoded tokens)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}")
    device = torch.device(device)
    cfg = size_config(arch, size, self_decoder)
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, max_tokens))
    if arch in NATIVE_ARCHS:
        # weights made in the target dtype (not float32 first): a 13B model then fits an 80 GB GPU
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = build_model(cfg, device=device, dtype=dtype, seed=seed)
        finally:
            torch.set_default_dtype(previous)
        return NativeRunner(arch=arch, config=cfg, model=model, device=device, params=cfg.n_params())
    check_peer(arch, device)
    torch.manual_seed(seed)
    build = _hf_llama if arch == "hf" else _fla_yoco
    return build(cfg, device, dtype, max_tokens)


def _hf_llama(cfg: ModelConfig, device, dtype, max_tokens: int) -> Runner:
    """``transformers``' Llama shaped as ``cfg`` (SDPA attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = getattr(LlamaConfig, "__dataclass_fields__", None) or {}
    rope = ({"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}}
            if "rope_parameters" in fields else {"rope_theta": cfg.rope_theta})
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=max_tokens,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=False, **rope)
    hf_cfg._attn_implementation = "sdpa"
    model = _hf_from_config(LlamaForCausalLM, hf_cfg, device, dtype)
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "sdpa":
        raise RuntimeError(f"transformers chose attention {impl!r} for Llama, not sdpa")
    return HFRunner(arch="hf", config=cfg, model=model, device=device, params=_count_params(model))


def _fla_yoco(cfg: ModelConfig, device, dtype, max_tokens: int) -> Runner:
    """flash-linear-attention's YOCO (gRet self-decoder) shaped as ``cfg``."""
    from fla.models.yoco import YOCOConfig, YOCOForCausalLM

    half = cfg.n_layers // 2
    fla_cfg = YOCOConfig(
        hidden_size=cfg.dim, num_self_decoder_layers=half, num_hidden_layers=cfg.n_layers,
        self_decoder_attn={"type": "gated_retention", "num_heads": cfg.n_self_heads,
                           "rope_theta": cfg.rope_theta,
                           "gate_logit_normalizer": cfg.gate_logit_normalizer},
        cross_decoder_attn={"num_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads,
                            "rope_theta": cfg.rope_theta},
        intermediate_size=cfg.ffn_dim, vocab_size=cfg.vocab_size, norm_eps=cfg.norm_eps,
        max_position_embeddings=max_tokens, tie_word_embeddings=False, fuse_cross_entropy=False)
    model = _hf_from_config(YOCOForCausalLM, fla_cfg, device, dtype)
    return HFRunner(arch="fla", config=cfg, model=model, device=device, params=_count_params(model),
                    extra={"prefill_kwargs": {"skip_cross_decoder": True}})
