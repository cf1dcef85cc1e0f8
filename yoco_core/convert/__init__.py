"""Foreign checkpoints, read from local files only (no hub, no ``trust_remote_code``).

* ``load_model("hf:PATH")``: a transformers directory, by its ``config.json``'s ``model_type``
  (``FAMILIES``): natively, into our ``Transformer``, ``llama``, ``mistral``, ``qwen2``, ``qwen3``
  (``hf_llama``), ``phi3`` (``hf_phi3``), ``gemma2`` and ``gemma3_text`` (``hf_gemma``); into our
  ``YOCO``, ``yoco`` (``fla_yoco``: flash-linear-attention's ``YOCOForCausalLM``, gated-retention
  or SWA self-decoder). Any other ``model_type`` runs on transformers' own model
  (``yoco_core.fallback``, the same prefill / decode API), announced with one ``Notice``.
* ``load_model("unilm:PATH")``: an official YOCO checkpoint (``unilm_yoco``: ``params.json`` plus a
  state dict).

A family (a module, or a ``hf_common.Family``) has ``TAG`` (the converted config's name is
``TAG:<folder name>``), ``PREFIXES`` (stripped from their tensor names), ``config_map(their_config,
source, name) -> ModelConfig``, which holds the refusals (one-line ``CheckpointError``, naming the
key) and needs no weights, so it runs before any weight is read, and ``finish(cfg, state, source) ->
(ModelConfig, Table)``: the key ``Table`` (``remap``) and what only the weights tell (FLA's FFN
width, unilm's vocabulary size and tying). Every converted config says ``tokenizer: "folder"``:
the folder's own tokenizer (``tokenizer.folder_tokenizer``: ``tokenizer.json``, a ``.tiktoken``
rank file, a sentencepiece ``tokenizer.model``; ``save_model`` copies those files along). A
folder without one (an official ``unilm:`` checkpoint, whose tokenizer is tiktoken's cl100k_base)
loads only with ``load_model(..., tokenizer=PATH)``; there is no silent fallback to bytes.
``LOADERS`` is the table ``checkpoint.load_model`` dispatches ``PREFIX:PATH`` names on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..state import CheckpointError, model_from_state
from ..model import CausalLM
from ..tokenizer import FOLDER, check_vocab, tokenizer_for
from . import fla_yoco, hf_gemma, hf_llama, hf_phi3, unilm_yoco
from .remap import Table, interleaved_to_half, read_json, read_weights, remap, strip_prefixes

__all__ = ["LOADERS", "load_hf", "load_unilm", "convert_folder", "Table", "remap", "interleaved_to_half", "FAMILIES",
           "hf_llama", "fla_yoco", "unilm_yoco"]

FAMILIES = {     # model_type -> the native family of hf:PATH (others: the transformers fallback)
    "llama": hf_llama.LLAMA, "mistral": hf_llama.MISTRAL, "qwen2": hf_llama.QWEN2, "qwen3": hf_llama.QWEN3,
    "phi3": hf_phi3.PHI3, "gemma2": hf_gemma.GEMMA2, "gemma3_text": hf_gemma.GEMMA3, "yoco": fla_yoco,
}


def convert_folder(family, their_config: dict, folder: Path, source: str, device="cpu", dtype=None,
                   tokenizer=None) -> CausalLM:
    """The weights of ``folder`` in ``family``'s format as our model, with its tokenizer attached
    (the folder's, or ``tokenizer``: ``bytes`` or a PATH). The config and its refusals come first,
    then the tokenizer: a refused checkpoint or a missing tokenizer reads no weights."""
    cfg = family.config_map(their_config, source, f"{family.TAG}:{folder.name}").replace(tokenizer=FOLDER)
    try:
        tok = tokenizer_for(cfg, folder, path=tokenizer)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    state = strip_prefixes(read_weights(folder), family.PREFIXES)
    cfg, table = family.finish(cfg, state, source)
    try:
        check_vocab(tok, cfg.vocab_size, source)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    model = model_from_state(cfg, remap(state, table, cfg, source), source, device, dtype or torch.float32)
    model.tokenizer = tok
    return model


def load_hf(path: str, device="cpu", dtype=None, tokenizer=None) -> CausalLM:
    """``hf:PATH``: a local transformers directory: a native family (``FAMILIES``) or the fallback."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"hf:{path}: not a directory (only local paths; no hub is reachable)")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"hf:{path}: no config.json")
    hf = read_json(cfg_file)
    kind = hf.get("model_type")
    family = FAMILIES.get(kind) if isinstance(kind, str) else None
    if family is None:       # anything else transformers can load runs on its own model (one notice)
        from ..fallback import load_fallback

        return load_fallback(folder, f"hf:{path}", device=device, dtype=dtype, tokenizer=tokenizer)
    return convert_folder(family, hf, folder, str(folder), device, dtype, tokenizer)


def load_unilm(path: str, device="cpu", dtype=None, tokenizer=None) -> CausalLM:
    """``unilm:PATH``: a folder with ``params.json`` and one state dict (.pt/.bin/.safetensors).
    Their tokenizer is tiktoken's cl100k_base: ``tokenizer=PATH/cl100k_base.tiktoken`` (or the
    rank file placed in the folder)."""
    folder = Path(path).expanduser()
    source = f"unilm:{path}"
    if not (folder / "params.json").is_file():
        raise CheckpointError(f"{source}: no params.json (microsoft/unilm YOCOArgs)")
    return convert_folder(unilm_yoco, read_json(folder / "params.json"), folder, source, device, dtype, tokenizer)


LOADERS = {"hf": load_hf, "unilm": load_unilm}     # load_model's PREFIX:PATH formats
