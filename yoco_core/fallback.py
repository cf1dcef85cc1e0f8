"""The transformers fallback: any local model folder that transformers' ``AutoModelForCausalLM``
loads (GPT-2, GPT-NeoX, ...) but our native path does not convert, behind our models' API.

``load_fallback(folder, source)`` reads ``config.json`` with ``AutoConfig`` (local files only,
never remote code), attaches and checks the tokenizer (``tokenizer.tokenizer_for``: the folder's
own, or the user's ``tokenizer=``; one with ids beyond the embedding is refused) before any weight
is read, then loads the weights with ``from_pretrained`` (safetensors; a ``.bin`` only through
``torch.load(weights_only=True)``, transformers' default, which we also pass explicitly), SDPA
attention where the model class supports it, and refuses a checkpoint that leaves tensors missing
(transformers would fill them at random). Every failure is one ``CheckpointError`` line.

``FallbackLM`` answers what ``generate``, ``yoco needle`` and ``yoco eval`` ask of a model
(``yoco_core.model.CausalLM``'s API): ``model(ids)`` (full forward, float32 logits ``[B, T, V]``),
``prefill(ids, chunk_size, reserve)`` (last logits ``[B, V]``, cache), ``decode(ids, cache)``
(``[B, n, V]``, cache), ``config`` (``FallbackConfig``), ``device``, ``dtype``, ``tokenizer``.
Its cache (``FallbackCache``) holds transformers' own cache object (a ``DynamicCache``, made by
the model on the first piece and grown by it), so chunked prefill is transformers continuing its
own cache. What it lacks against the native path: YOCO's early-exit prefill, the CUDA-graph decode
step and the split-KV decode kernel (``graphs.make_decoder`` decodes it eagerly).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .cache import Cache
from .errors import Notice
from .model import chunked_prefill
from .state import CheckpointError
from .tokenizer import FOLDER, check_vocab, tokenizer_for

EXTRA = "pip install 'yoco[hf]'"
# where HF configs keep the longest context they were built for (the first one present wins)
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length", "n_ctx")
NO_LIMIT = 1 << 21            # a config that states no maximum (ALiBi models): ModelConfig's default


@dataclass(frozen=True)
class FallbackConfig:
    """What callers read off ``model.config``, for a model transformers runs. ``arch`` is ``hf``
    and ``self_decoder`` None, so ``graphs.graph_capable`` says no; ``tokenizer`` is ``folder``
    (the checkpoint's own files, as every converted config says)."""
    name: str                  # hf:<folder name>
    model_type: str
    vocab_size: int
    max_seq_len: int
    dim: int = 0
    n_layers: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    tie_embeddings: bool = False
    attn_implementation: str = "eager"
    arch: str = "hf"
    self_decoder: str | None = None
    tokenizer: str = FOLDER

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FallbackCache(Cache):
    """Transformers' cache object (``hf``: None until the first piece) with our ``Cache``
    interface. ``length``: the positions fed so far; ``capacity``: the model's maximum (a
    ``DynamicCache`` preallocates nothing and grows by concatenation, so nothing is reserved);
    ``nbytes()``: the bytes of every tensor it holds (their storages, each counted once), all of it
    KV (``state_nbytes()`` is 0, ``states`` empty)."""

    def __init__(self, batch: int, max_len: int):
        self.hf = None
        self._batch, self._length, self._max_len = batch, 0, max_len

    @property
    def states(self) -> list:
        return []

    def buffers(self) -> list:
        return []                # no KVBuffer: transformers' own layers hold the keys and values

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._max_len

    def advance(self, n: int) -> None:
        raise NotImplementedError("a transformers cache advances itself as the model writes it; nothing "
                                  "writes it outside a forward step")

    def nbytes(self) -> int:
        return sum(_storages(self.hf, {}, set()).values())

    def kv_nbytes(self) -> int:
        return self.nbytes()

    def state_nbytes(self) -> int:
        return 0

    def fill_random(self, ctx: int, generator: torch.Generator) -> None:
        raise NotImplementedError("a transformers cache cannot be filled without a prefill (decode-only "
                                  "profiling needs one of our models)")


def _storages(obj, found: dict, seen: set) -> dict:
    """``{storage address: bytes}`` of every tensor in ``obj``: a tensor, a list / tuple / dict of
    them, or a transformers object (its attributes, e.g. ``DynamicCache.layers[i].keys``)."""
    if id(obj) in seen:
        return found
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        s = obj.untyped_storage()
        found[(s.device, s.data_ptr())] = s.nbytes()
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _storages(x, found, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            _storages(x, found, seen)
    elif type(obj).__module__.startswith("transformers.") and hasattr(obj, "__dict__"):
        for x in vars(obj).values():
            _storages(x, found, seen)
    return found


class FallbackLM(nn.Module):
    """A transformers causal LM (``hf``) with our models' API (module docstring)."""

    def __init__(self, hf: nn.Module, config: FallbackConfig):
        super().__init__()
        self.hf = hf
        self.config = config
        self.tokenizer = None      # load_fallback attaches one, as load_model does
        params = inspect.signature(hf.forward).parameters
        self._cache_arg = cache_kwarg(hf)
        self._keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def _check_length(self, total: int) -> None:
        if total > self.config.max_seq_len:
            raise ValueError(f"{total} tokens exceed the model's maximum of {self.config.max_seq_len}")

    def forward(self, input_ids):
        """Logits ``[B, T, V]`` (float32) for every position: transformers' own forward, no cache."""
        self._check_length(input_ids.shape[1])
        return self.hf(input_ids=input_ids, use_cache=False).logits.float()

    def new_cache(self, batch: int, capacity: int = 0) -> FallbackCache:
        """An empty cache (``capacity`` is not preallocated: transformers grows its own)."""
        return FallbackCache(batch, self.config.max_seq_len)

    def _run(self, input_ids, cache: FallbackCache, need: str | None, horizon: int | None = None):
        """Feed ``input_ids`` after the cache; logits of ``"all"`` of them, the ``"last"`` or None.
        (``horizon``, the whole prompt's length, is for our RoPE scalings: transformers' model
        computes its own from the positions.)"""
        kw = {self._cache_arg: cache.hf, "use_cache": True}
        if need != "all" and self._keep_arg:
            kw[self._keep_arg] = 1                # the head for one position only
        out = self.hf(input_ids=input_ids, **kw)
        cache.hf = returned_cache(out)
        cache._length += input_ids.shape[1]
        if need is None:
            return None
        logits = out.logits.float()
        return logits[:, -1:] if need == "last" else logits

    @torch.inference_mode()
    def prefill(self, input_ids, chunk_size: int | None = None, reserve: int = 256):
        """(Logits of the prompt's last position ``[B, V]``, cache). ``chunk_size``: the prompt in
        pieces of that many tokens, each continuing transformers' cache (None or 0: one piece).
        ``reserve`` is accepted for the API's sake: transformers' cache grows as it goes."""
        return chunked_prefill(self, input_ids, chunk_size, reserve)

    @torch.inference_mode()
    def decode(self, input_ids, cache: FallbackCache):
        """Feed new tokens ``[B, n]`` after the cache; return (their logits ``[B, n, V]``, cache)."""
        self._check_length(cache.length + input_ids.shape[1])
        return self._run(input_ids, cache, "all"), cache


# -- loading --------------------------------------------------------------------------------------
def cache_kwarg(model: nn.Module) -> str:
    """The name ``model.forward`` takes its cache by: ``cache`` in transformers 5's models,
    ``past_key_values`` before them and in fla's models."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    """The cache a transformers forward returned, under either name."""
    new = out.get("cache")
    return new if new is not None else out.get("past_key_values")


def load_fallback(folder: Path, source: str, device="cpu", dtype=None, tokenizer=None) -> FallbackLM:
    """The model of the transformers folder ``folder`` (``source``: how the user named it, for
    messages) on ``device`` in ``dtype`` (None: bf16 on CUDA, fp32 elsewhere), with its tokenizer
    attached (the folder's, or ``tokenizer``: ``bytes`` or a PATH). Config, class and tokenizer are
    checked before any weight is read; announced with one ``Notice``."""
    from .dtypes import default_dtype

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{source}: no config.json in {folder} (only local transformers folders)")
    transformers = _import_transformers(source)
    hf_config, cls = _read_config(transformers, folder, source)
    cfg = _config_of(hf_config, cls, folder, source)
    try:
        tok = tokenizer_for(cfg, folder, path=tokenizer)
        check_vocab(tok, cfg.vocab_size, source)
    except ValueError as e:              # check_vocab's message names the source already
        raise CheckpointError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
    hf = _load_weights(transformers, folder, hf_config, cfg, source, dtype or default_dtype(device))
    model = FallbackLM(hf.to(device).eval(), cfg)
    model.tokenizer = tok
    _announce(source, cfg)
    return model


def transformers_model(folder: Path, source: str, device, dtype):
    """(transformers' own ``AutoModelForCausalLM`` of ``folder`` on ``device`` in ``dtype``, in eval
    mode, with its best attention: SDPA where the class has it; its ``FallbackConfig``): what
    ``yoco profile --arch hf -m hf:DIR`` runs, loaded exactly as the fallback loads it."""
    folder = Path(folder).expanduser()
    transformers = _import_transformers(source)
    hf_config, cls = _read_config(transformers, folder, source)
    cfg = _config_of(hf_config, cls, folder, source)
    return _load_weights(transformers, folder, hf_config, cfg, source, dtype).to(device).eval(), cfg


def _announce(source: str, cfg: FallbackConfig) -> None:
    warnings.warn(f"{source}: model_type {cfg.model_type!r} runs on the transformers fallback (AutoModelForCausalLM, "
                  f"{cfg.attn_implementation} attention, transformers' own cache): chunked prefill continues that "
                  "cache, no early-exit prefill; decoding is eager, no CUDA graph and no split-KV kernel",
                  Notice, stacklevel=3)


def _import_transformers(source: str):
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{source}: the transformers fallback needs transformers, the 'hf' extra "
                              f"({EXTRA})") from None
    return transformers


def _read_config(transformers, folder: Path, source: str):
    """(transformers' config of ``folder``, its ``AutoModelForCausalLM`` class); one line when
    transformers cannot read it, it needs remote code, or the type has no causal-LM class."""
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                            trust_remote_code=False)
    except Exception as e:           # unknown model_type, remote code asked for, bad JSON: many kinds
        why = ("it names its own code (auto_map), which the fallback never runs: trust_remote_code=False"
               if _names_code(folder) else _first(e))
        raise CheckpointError(f"{source}: transformers cannot read its config ({why})") from None
    mapping = transformers.AutoModelForCausalLM._model_mapping
    if type(hf_config) not in mapping:
        raise CheckpointError(f"{source}: model_type {hf_config.model_type!r} has no causal-LM class in "
                              "transformers (AutoModelForCausalLM)")
    return hf_config, mapping[type(hf_config)]


def _names_code(folder: Path) -> bool:
    """Whether ``config.json`` asks for model code shipped in the folder (``auto_map``)."""
    try:
        return "auto_map" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _config_of(hf_config, cls, folder: Path, source: str) -> FallbackConfig:
    """Our ``FallbackConfig`` of transformers' config (its text part, for multimodal ones)."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    if not isinstance(getattr(text, "vocab_size", None), int) or text.vocab_size <= 0:
        raise CheckpointError(f"{source}: its config states no vocab_size (the embedding's rows)")
    length = next((v for k in LENGTH_KEYS if isinstance(v := getattr(text, k, None), int) and v > 0), NO_LIMIT)
    dim, heads = int(getattr(text, "hidden_size", 0) or 0), int(getattr(text, "num_attention_heads", 0) or 0)
    head_dim = getattr(text, "head_dim", None) or (dim // heads if heads else 0)
    return FallbackConfig(
        name=f"hf:{folder.name}", model_type=str(hf_config.model_type), vocab_size=int(text.vocab_size),
        max_seq_len=length, dim=dim, n_layers=int(getattr(text, "num_hidden_layers", 0) or 0), n_heads=heads,
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads), head_dim=int(head_dim),
        tie_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        attn_implementation="sdpa" if getattr(cls, "_supports_sdpa", False) else "eager")


def _load_weights(transformers, folder: Path, hf_config, cfg: FallbackConfig, source: str, dtype):
    """``AutoModelForCausalLM.from_pretrained`` of ``folder``, offline, on the CPU in ``dtype``;
    one line for a file it cannot read and for tensors the checkpoint lacks."""
    from packaging.version import Version

    from .perf.hardware import is_out_of_memory

    dtype_arg = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    try:
        with _quiet(transformers):
            hf, info = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder), config=hf_config, local_files_only=True, trust_remote_code=False, weights_only=True,
                output_loading_info=True, attn_implementation=cfg.attn_implementation, **{dtype_arg: dtype})
    except Exception as e:           # missing / corrupt / unsafe weights files: OSError, pickle, safetensors
        if is_out_of_memory(e):
            raise
        raise CheckpointError(f"{source}: transformers cannot load the weights ({_first(e)})") from None
    lacking = sorted(info.get("missing_keys") or ()) + sorted(k[0] for k in info.get("mismatched_keys") or ())
    if lacking:
        raise CheckpointError(f"{source}: the weights lack {len(lacking)} tensors of the model (e.g. {lacking[0]}); "
                              "transformers would fill them at random")
    return hf


@contextlib.contextmanager
def _quiet(transformers):
    """Transformers' "Loading weights" progress bar off while loading (the CLI prints its own)."""
    log = transformers.utils.logging
    was = log.is_progress_bar_enabled()
    log.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            log.enable_progress_bar()


def _first(e: BaseException) -> str:
    """The message of ``e`` on one line (whitespace folded), at most 200 characters."""
    text = " ".join(str(e).split())
    return text[:200] if text else type(e).__name__
