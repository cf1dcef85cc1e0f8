"""Our models and the peers (HF Llama, fla's YOCO) behind one small interface, ``Runner``:
``prefill``, ``decode``, ``cache_nbytes``, ``random_cache`` (decode-only cells, ours only),
``prepare_decode`` / ``end_cell`` / ``close`` around a cell. ``build_runner`` makes the runner of one
(arch, size) with random weights; ``size_config`` is the same-shaped preset the cost model uses.

A model folder (``yoco profile -m hf:DIR`` or one of our checkpoint folders) is read without its
weights by ``read_folder`` (a ``FolderModel``: its native config, what runs it); then
``build_folder_runner`` makes the runner of one arch on it: ``transformer`` our native path on its
weights (``load_model``), ``hf`` transformers' ``AutoModelForCausalLM`` on the same folder (SDPA),
``yoco`` a YOCO with random weights of its shape (``yoco_like_config``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import PRESETS, ModelConfig, get_config
from ..fallback import cache_kwarg, returned_cache
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
    ``config`` is the same-shaped ``ModelConfig`` the analytic model uses (None where there is
    none: a folder only transformers runs); ``vocab`` the token ids it takes (0: the config's)."""
    arch: str
    config: ModelConfig | None
    model: Any
    device: torch.device
    params: int
    extra: dict = field(default_factory=dict)
    vocab: int = 0
    group: Any = None                # the tensor-parallel group its model is sharded over (None: one rank)

    @property
    def vocab_size(self) -> int:
        return self.vocab or self.config.vocab_size

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
    """HF-style models (``transformers``' models, fla's YOCO): forward with a cache object, passed
    as the forward names it (``cache`` from transformers 5 on, ``past_key_values`` before)."""

    def _call(self, ids, cache, **kw):
        if "cache_arg" not in self.extra:
            self.extra["cache_arg"] = cache_kwarg(self.model)
        out = self.model(input_ids=ids, use_cache=True, **{self.extra["cache_arg"]: cache}, **kw)
        return out.logits[:, -1], returned_cache(out)

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
        import importlib.util

        try:       # fla-core (the kernels, extra gpu) installs the package fla; its models come with the extra fla
            found = importlib.util.find_spec("fla") is not None and importlib.util.find_spec("fla.models") is not None
        except Exception:
            found = False
        if not found:
            raise PeerUnavailable("arch fla needs flash-linear-attention (pip install 'yoco[fla]' or pip install "
                                  "flash-linear-attention)")
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


def _build_native(arch: str, cfg: ModelConfig, device, dtype, seed: int, fp8: bool = False) -> NativeRunner:
    """Our model of ``cfg`` with random weights, made in the target dtype (not float32 first: a
    13B model then fits an 80 GB GPU); ``fp8``: then its projections quantized to float8
    (``yoco_core.quant.quantize_fp8``: all but the LM head; the rest stays in ``dtype``, in which
    the products are computed)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = build_model(cfg, device=device, dtype=dtype, seed=seed)
    finally:
        torch.set_default_dtype(previous)
    if fp8:
        from ..quant import quantize_fp8

        quantize_fp8(model)
        release(device)                  # the projections' full-precision weights are garbage now
    return NativeRunner(arch=arch, config=cfg, model=model, device=device, params=cfg.n_params())


def _count_params(model) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def build_runner(arch: str, size: str, device, dtype: torch.dtype, max_tokens: int,
                 self_decoder: str = "gret", seed: int = 0, fp8: bool = False) -> Runner:
    """Build the model of one (arch, size) on ``device`` in ``dtype`` with random weights (a fixed
    seed) and room for ``max_tokens`` positions (context + decoded tokens); ``fp8``: its
    projections then in float8 (ours only: ``_build_native``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}")
    if fp8 and arch not in NATIVE_ARCHS:
        raise ValueError(f"fp8 is for our models (arch yoco, transformer), not {arch}")
    device = torch.device(device)
    cfg = size_config(arch, size, self_decoder)
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, max_tokens))
    if arch in NATIVE_ARCHS:
        return _build_native(arch, cfg, device, dtype, seed, fp8)
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


# -- a model folder (yoco profile -m) ---------------------------------------------------------
class FolderError(ValueError):
    """A ``-m`` spec that cannot be profiled, or an arch that cannot run it; the message is one line."""


# the model column of each arch run on a folder: our native path, transformers, the YOCO of its shape
FOLDER_MODEL = {"transformer": "{prefix}:{label}", "hf": "transformers:{label}", "yoco": "yoco-like:{label}"}
# what the YOCO of a folder's shape takes from its config (the rest is YOCO's own, or named in its note)
_YOCO_LIKE_KEEPS = ("vocab_size", "dim", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta", "rope_scaling",
                    "norm_eps", "tie_embeddings", "embed_scale", "max_seq_len")
_NOT_SHAPE = {"name", "arch", "tokenizer", "n_layers", "head_size", "self_decoder", "n_self_heads", "window"}


@dataclass(frozen=True)
class FolderModel:
    """A model folder, read without its weights: ``hf:DIR`` (``prefix`` hf: a transformers folder)
    or one of our checkpoint folders (``ckpt``). ``config``: what our native path builds from it
    (None where it does not: ``native_refusal`` says why, e.g. a model_type only the transformers
    fallback runs); ``label``: the folder's name (the CSV's size column)."""
    spec: str
    path: Path
    label: str
    prefix: str
    config: ModelConfig | None
    model_type: str = ""
    native_refusal: str = ""

    @property
    def native_arch(self) -> str | None:
        """The arch our native path runs it as: transformer, or yoco for a YOCO checkpoint."""
        return None if self.config is None else self.config.arch

    def default_archs(self) -> list[str]:
        """What ``--arch auto`` runs: our native path where there is one, and transformers on an
        hf: folder whose model_type it knows (else hf alone, for ``check_arch`` to say why not)."""
        archs = [self.native_arch] if self.native_arch else []
        if self.prefix == "hf":
            try:
                self.check_arch("hf")
                archs.append("hf")
            except (FolderError, PeerUnavailable):
                pass
        return archs or ["hf"]

    def model_name(self, arch: str) -> str:
        """The model column: ``hf:X`` (ours), ``transformers:X``, ``yoco-like:X`` (random weights)."""
        kind = "transformer" if arch == self.native_arch else arch
        return FOLDER_MODEL[kind].format(prefix=self.prefix, label=self.label)

    def check_arch(self, arch: str) -> None:
        """Raise ``FolderError`` (one line) where ``arch`` cannot run this folder."""
        name = f"-m {self.spec}"
        if arch == "fla":
            raise FolderError(f"--arch fla does not run -m folders (it profiles fla's YOCO of a preset --size); "
                              f"use transformer, hf or yoco with {name}")
        if arch == "hf":
            if self.prefix != "hf":
                raise FolderError(f"--arch hf runs transformers folders (-m hf:DIR); {name} is one of our checkpoints")
            check_peer("hf")
            from transformers import AutoModelForCausalLM, CONFIG_MAPPING

            if self.model_type not in CONFIG_MAPPING or CONFIG_MAPPING[self.model_type] not in \
                    AutoModelForCausalLM._model_mapping:
                raise FolderError(f"--arch hf: transformers has no causal-LM class for model_type "
                                  f"{self.model_type!r} of {name}")
        elif self.config is None:
            raise FolderError(f"--arch {arch}: {self.native_refusal}" + ("; --arch hf runs it (transformers)"
                                                                        if self.prefix == "hf" else ""))
        elif arch == "transformer" and self.native_arch != "transformer":
            raise FolderError(f"--arch transformer: {name} is a YOCO checkpoint; profile it with --arch yoco")
        elif arch == "yoco" and self.native_arch == "transformer":
            yoco_like_config(self, "gret")           # raises where no YOCO has its shape

    def config_for(self, arch: str, self_decoder: str) -> tuple[ModelConfig | None, str]:
        """(The config the cost model reads for ``arch`` on this folder, the rows' note): the
        native config for ours and for transformers (same math), the YOCO of its shape for yoco."""
        if arch == "yoco" and self.native_arch == "transformer":
            return yoco_like_config(self, self_decoder)
        return self.config, ""


def read_folder(spec: str) -> FolderModel | None:
    """The folder ``spec`` names (``hf:DIR`` or a checkpoint folder with our ``config.json``), its
    config read without weights; None for a preset name (profiled as ``--size``). ``FolderError``
    (one line) for anything else."""
    from ..checkpoint import read_config
    from ..state import CheckpointError

    if spec.lower() in PRESETS:
        return None
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "hf":
        return _read_hf_folder(spec, Path(rest).expanduser())
    path = Path(spec).expanduser()
    if sep and len(prefix) > 1 and not path.exists():
        raise FolderError(f"-m {spec}: profile takes hf:DIR, one of our checkpoint folders or a preset, not {prefix}:")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FolderError(f"-m {spec}: neither a preset (e.g. transformer-tiny), hf:DIR nor a checkpoint folder "
                          "(a folder with config.json)")
    try:
        cfg = read_config(path)
    except CheckpointError as e:
        raise FolderError(f"-m {spec}: {e} (a transformers folder? use -m hf:{spec})") from None
    label = path.resolve().name
    return FolderModel(spec, path, label, "ckpt", cfg.replace(name=f"ckpt:{label}"))


def _read_hf_folder(spec: str, path: Path) -> FolderModel:
    """``hf:DIR``: its ``config.json``, and our native family's config of it where there is one."""
    from ..convert import FAMILIES
    from ..state import CheckpointError

    if not path.is_dir():
        raise FolderError(f"-m {spec}: {path} is not a folder (only local folders; no hub is reachable)")
    try:
        their = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FolderError(f"-m {spec}: no config.json in {path}") from None
    except (OSError, ValueError) as e:
        raise FolderError(f"-m {spec}: config.json is not readable JSON ({e})") from None
    kind = their.get("model_type") if isinstance(their, dict) else None
    if not isinstance(kind, str):
        raise FolderError(f"-m {spec}: config.json names no model_type")
    label = path.resolve().name
    family = FAMILIES.get(kind)
    if family is None:
        return FolderModel(spec, path, label, "hf", None, kind, f"model_type {kind!r} of -m {spec} runs only on "
                                                                "the transformers fallback, not our native path")
    try:
        cfg = family.config_map(their, str(path), f"{family.TAG}:{label}")
    except CheckpointError as e:
        return FolderModel(spec, path, label, "hf", None, kind, f"our native path refuses it ({e})")
    return FolderModel(spec, path, label, "hf", cfg.replace(name=f"hf:{label}"), kind)


def yoco_like_config(folder: FolderModel, self_decoder: str) -> tuple[ModelConfig, str]:
    """A YOCO of the folder's width, depth (rounded up to even), heads, KV heads, FFN and
    vocabulary (random weights), and the note saying so and what differs (a head size our YOCO
    does not take: its is dim / heads; the family's extras, e.g. q/k/v biases, not carried)."""
    cfg = folder.config
    layers = cfg.n_layers + cfg.n_layers % 2
    if cfg.dim % cfg.n_heads or (cfg.dim // cfg.n_heads) % 2:
        raise FolderError(f"--arch yoco: no YOCO has the shape of -m {folder.spec} (dim {cfg.dim} over "
                          f"{cfg.n_heads} heads is not an even head size)")
    kw = {k: getattr(cfg, k) for k in _YOCO_LIKE_KEEPS}
    diffs = [f"{layers} layers (its {cfg.n_layers} rounded up to even)"] if layers != cfg.n_layers else []
    if cfg.head_dim != cfg.dim // cfg.n_heads:
        diffs.append(f"head size {cfg.dim // cfg.n_heads} (its {cfg.head_dim}; our YOCO's is dim / heads)")

    def make(**changes) -> ModelConfig:
        return ModelConfig(name=folder.model_name("yoco"), arch="yoco", self_decoder=self_decoder, n_layers=layers,
                           **{**kw, **changes})

    try:
        yoco = make()
    except ValueError:
        if not cfg.rope_scaling:
            raise FolderError(f"--arch yoco: no YOCO has the shape of -m {folder.spec}") from None
        yoco = make(rope_scaling=None)      # e.g. per-frequency factors for another head size
    dropped = [f.name for f in dataclasses.fields(ModelConfig)
               if f.name not in _NOT_SHAPE and getattr(cfg, f.name) != getattr(yoco, f.name)]
    if dropped:
        diffs.append("not carried over: " + ", ".join(dropped))
    note = f"random weights of the shape of {cfg.name}" + (f"; {'; '.join(diffs)}" if diffs else "")
    return yoco, note


def build_folder_runner(arch: str, folder: FolderModel, device, dtype: torch.dtype, max_tokens: int,
                        self_decoder: str = "gret", seed: int = 0) -> Runner:
    """The runner of ``arch`` on ``folder`` (module docstring), with room for ``max_tokens``
    positions (a folder's stated maximum is not enforced: both libraries' RoPE runs past it)."""
    folder.check_arch(arch)
    device = torch.device(device)
    if arch == "hf":
        return _hf_folder(folder, device, dtype)
    if arch == "yoco" and folder.native_arch == "transformer":
        cfg, _ = yoco_like_config(folder, self_decoder)
        return _build_native("yoco", cfg.replace(max_seq_len=max(cfg.max_seq_len, max_tokens)), device, dtype, seed)
    return _native_folder(arch, folder, device, dtype, max_tokens)


def _native_folder(arch: str, folder: FolderModel, device, dtype, max_tokens: int) -> NativeRunner:
    """Our native path on the folder's weights: ``load_model``, with the byte tokenizer (profiling
    feeds random ids; the folder needs no tokenizer files)."""
    from ..checkpoint import load_model

    model = load_model(folder.spec, device=device, dtype=dtype, tokenizer="bytes")
    if getattr(model.config, "arch", None) not in NATIVE_ARCHS:
        raise FolderError(f"-m {folder.spec}: loaded on the transformers fallback, not our native path")
    cfg = model.config.replace(name=folder.model_name(arch), max_seq_len=max(model.config.max_seq_len, max_tokens))
    model.config = cfg
    return NativeRunner(arch=arch, config=cfg, model=model, device=device, params=_count_params(model))


def _hf_folder(folder: FolderModel, device, dtype) -> HFRunner:
    """transformers' ``AutoModelForCausalLM`` on the folder, loaded as the fallback loads it
    (``fallback.transformers_model``: local files only, SDPA where the class has it, else its eager
    attention, e.g. Gemma 2), the weights in ``dtype``."""
    from ..fallback import transformers_model

    model, _ = transformers_model(folder.path, folder.spec, device, dtype)
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return HFRunner(arch="hf", config=folder.config, model=model, device=device, params=_count_params(model),
                    vocab=int(text.vocab_size))
