"""yoco_core: the compact YOCO / Transformer model core of the yoco toolkit.

The names below are imported on first use (PEP 562), so that ``import yoco_core.dtypes`` (what
``yoco report`` needs to read a CSV) loads neither torch nor the model, while
``from yoco_core import load_model`` works as usual.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "cache": ("Cache", "KVBuffer", "TransformerCache", "YOCOCache"),
    "checkpoint": ("load_model", "register_loader", "save_model"),
    "state": ("CheckpointError", "model_from_state"),
    "config": ("PRESETS", "ModelConfig", "get_config"),
    "generation": ("Generation", "generate"),
    "model": ("YOCO", "CausalLM", "Transformer", "build_model"),
    "tokenizer": ("ByteTokenizer", "HFTokenizer", "Tokenizer", "tokenizer_for"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["convert", "__version__"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name == "convert":
        value = importlib.import_module(".convert", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
