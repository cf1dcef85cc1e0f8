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
checkpoint's folder (``tokenizer.tokenizer_for``). ``save_model`` copies that tokenizer's files into
the checkpoint, so a checkpoint folder is self-contained and can be moved.

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
from .tokenizer import FOLDER, copy_tokenizer_files, tokenizer_for

WEIGHTS_DIR = Path(__file__).parent / "weights"
FORMAT_VERSION = 1


_LOADERS: dict[str, Callable[..., CausalLM]] = dict(LOADERS)     # hf:, unilm: and any registered


def register_loader(prefix: str, fn: Callable[..., CausalLM]) -> None:
    """``load_model(f"{prefix}:PATH", ...)`` calls ``fn(PATH, device=, dtype=)``; the tokenizer
    the returned model's config names is then read from the folder ``PATH``."""
    _LOADERS[prefix] = fn


def save_model(model: CausalLM, path) -> Path:
    """``model.safetensors`` + ``config.json`` in the folder ``path``, with the files of the model's
    tokenizer when it came from files (its config then says ``tokenizer: "folder"``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg, tok = model.config, getattr(model, "tokenizer", None)
    if getattr(tok, "path", None) is not None:           # an HFTokenizer: its files travel along
        copy_tokenizer_files(tok.path, path)
    if tok is not None:
        cfg = cfg.replace(tokenizer=tok.name)
    if cfg.tokenizer == FOLDER and not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path}: the config names tokenizer files, but the model holds no tokenizer "
                              "to copy them from (attach one: model.tokenizer = tokenizer_for(config, folder))")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "yoco", "version": str(FORMAT_VERSION)})
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


def load_model(name_or_path: str, device="cpu", dtype: torch.dtype | None = None, seed: int = 0) -> CausalLM:
    """A preset, a checkpoint folder / file, or ``PREFIX:PATH`` (module docstring), with
    ``model.tokenizer`` attached."""
    dtype = dtype or default_dtype(device)
    name = str(name_or_path)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _LOADERS and len(prefix) > 1:  # (a one-letter prefix is a Windows drive)
        return _with_tokenizer(_LOADERS[prefix](rest, device=device, dtype=dtype), Path(rest).expanduser())
    if name.lower() in PRESETS:
        shipped = WEIGHTS_DIR / name.lower()
        if (shipped / "config.json").is_file():
            return _with_tokenizer(_load_dir(shipped, device, dtype), shipped)
        return _with_tokenizer(build_model(get_config(name), device=device, dtype=dtype, seed=seed), None)
    path = Path(name).expanduser()
    if not path.exists():
        known = ", ".join(sorted(k for k in PRESETS if k.endswith("tiny")))
        raise CheckpointError(f"{name!r} is neither a preset (e.g. {known}) nor an existing path")
    return _with_tokenizer(_load_dir(path, device, dtype), path if path.is_dir() else path.parent)


def _with_tokenizer(model: CausalLM, folder: Path | None) -> CausalLM:
    try:
        model.tokenizer = tokenizer_for(model.config, folder)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return model


def _load_dir(path: Path, device, dtype) -> CausalLM:
    cfg = read_config(path)
    file = weights_file(path)
    return model_from_state(cfg, read_state_dict(file), str(file), device, dtype)
