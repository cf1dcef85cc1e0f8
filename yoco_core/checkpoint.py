"""Saving and loading weights: safetensors + ``config.json``, nothing executable.

``load_model`` accepts:

* a preset name (``yoco-tiny``, ``transformer-3b``, ...): the weights shipped in the package under
  ``yoco_core/weights/<name>/`` if there are any, else random weights (for profiling);
* a directory with ``config.json`` and ``model.safetensors`` (what ``save_model`` writes), or
  with a ``.pt`` / ``.bin`` state dict, read with ``torch.load(..., weights_only=True)``;
* a path to a ``.safetensors`` / ``.pt`` / ``.bin`` file with ``config.json`` beside it;
* ``PREFIX:PATH`` for a foreign format: ``hf:`` and ``unilm:`` (``yoco_core.convert``), or one
  added with ``register_loader``.

The model comes back with ``model.tokenizer`` attached: the one its config names, read from the
checkpoint's folder (``tokenizer.tokenizer_for``), or the one ``tokenizer=`` names (``bytes``, a
folder, a ``tokenizer.json`` or a ``.tiktoken`` rank file: ``tokenizer.load_tokenizer``). A
tokenizer with more ids than the model's embedding is refused. ``save_model`` copies that
tokenizer's files into the checkpoint, so a checkpoint folder is self-contained and can be moved.

Reading and loading state dicts lives in ``state`` (shared with ``convert``). Every failure a
user can cause raises ``CheckpointError`` with a one-line message.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .config import PRESETS, ModelConfig, get_config
from .convert import LOADERS
from .dtypes import default_dtype
from .model import CausalLM, build_model
from .state import CheckpointError, model_from_state, read_state_dict
from .tokenizer import FOLDER, check_vocab, copy_tokenizer_files, has_tokenizer_files, tokenizer_for

WEIGHTS_DIR = Path(__file__).parent / "weights"
FORMAT_VERSION = 1


_LOADERS: dict[str, Callable[..., CausalLM]] = dict(LOADERS)     # hf:, unilm: and any registered


def register_loader(prefix: str, fn: Callable[..., CausalLM]) -> None:
    """``load_model(f"{prefix}:PATH", ...)`` calls ``fn(PATH, device=, dtype=)``; the tokenizer
    the returned model's config names is then read from the folder ``PATH``."""
    _LOADERS[prefix] = fn


def write_weights(state: dict, path, **metadata: str) -> None:
    """``state`` as our safetensors file ``path``: the format and version our readers check, and
    ``metadata`` beside them (a shipped file's ``dtype``)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "yoco", "version": str(FORMAT_VERSION), **metadata})


def save_model(model: CausalLM, path) -> Path:
    """``model.safetensors`` + ``config.json`` in the folder ``path``, with the files of the model's
    tokenizer when it came from files (its config then says ``tokenizer: "folder"``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg, tok = model.config, getattr(model, "tokenizer", None)
    if getattr(tok, "path", None) is not None:           # read from files: they travel along
        copy_tokenizer_files(tok, path)
    if tok is not None:
        cfg = cfg.replace(tokenizer=tok.name)
    if cfg.tokenizer == FOLDER and not has_tokenizer_files(path):
        raise CheckpointError(f"{path}: the config names tokenizer files, but the model holds no tokenizer "
                              "to copy them from (attach one: model.tokenizer = tokenizer_for(config, folder))")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    write_weights(state, path / "model.safetensors")
    (path / "config.json").write_text(cfg.to_json() + "\n")
    return path


def read_config(path) -> ModelConfig:
    path = Path(path)
    cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json at {cfg_file}")
    try:
        return ModelConfig.from_dict(json.loads(cfg_file.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError, OSError) as e:
        raise CheckpointError(f"bad config {cfg_file}: {e}") from None


def weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for pattern in ("model.safetensors", "*.safetensors", "*.pt", "*.bin"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    raise CheckpointError(f"no weights (.safetensors, .pt or .bin) in {path}")


def load_model(name_or_path: str, device="cpu", dtype: torch.dtype | None = None, seed: int = 0,
               tokenizer=None) -> CausalLM:
    """A preset, a checkpoint folder / file, or ``PREFIX:PATH`` (module docstring), with
    ``model.tokenizer`` attached: its own, or ``tokenizer`` (``bytes`` or a PATH) when given. The
    tokenizer is read before the weights wherever its config is known without them (a refused
    tokenizer reads no weights)."""
    dtype = dtype or default_dtype(device)
    name = str(name_or_path)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _LOADERS and len(prefix) > 1:  # (a one-letter prefix is a Windows drive)
        if _LOADERS[prefix] is LOADERS.get(prefix):      # ours: the tokenizer before the weights
            return _LOADERS[prefix](rest, device=device, dtype=dtype, tokenizer=tokenizer)
        return _attach(_LOADERS[prefix](rest, device=device, dtype=dtype), Path(rest).expanduser(), tokenizer)
    if name.lower() in PRESETS:
        shipped = WEIGHTS_DIR / name.lower()
        if (shipped / "config.json").is_file():
            return _load_dir(shipped, device, dtype, tokenizer)
        return _attach(build_model(get_config(name), device=device, dtype=dtype, seed=seed), None, tokenizer)
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join(sorted(k for k in PRESETS if k.endswith("tiny")))
        raise CheckpointError(f"{name!r} is neither a preset (e.g. {known}) nor an existing path")
    return _load_dir(path, device, dtype, tokenizer)


def _fitting_tokenizer(cfg: ModelConfig, folder: Path | None, path, source: str):
    """The tokenizer for ``cfg`` (``path``: the user's choice instead of the checkpoint's), refused
    (one line) when missing or when it has ids beyond the embedding."""
    try:
        tok = tokenizer_for(cfg, folder, path=path)
        check_vocab(tok, cfg.vocab_size, source)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return tok


def _attach(model: CausalLM, folder: Path | None, path=None) -> CausalLM:
    model.tokenizer = _fitting_tokenizer(model.config, folder, path, model.config.name)
    return model


def _load_dir(path: Path, device, dtype, tokenizer=None) -> CausalLM:
    """A checkpoint folder / file; its tokenizer read (and checked) before its weights."""
    cfg = read_config(path)
    tok = _fitting_tokenizer(cfg, path if path.is_dir() else path.parent, tokenizer, str(path))
    file = weights_file(path)
    model = model_from_state(cfg, read_state_dict(file), str(file), device, dtype)
    model.tokenizer = tok
    return model
