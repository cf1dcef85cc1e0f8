"""Every tokenizer, apart from the models.

A model holds no tokenizer by construction: ``load_model`` attaches the one its checkpoint names
(``model.tokenizer = tokenizer_for(config, folder)``); code that builds a model itself calls
``tokenizer_for(model.config)``. What ``config.tokenizer`` may say:

* ``"bytes"``: ``ByteTokenizer`` (UTF-8 bytes 0..255 plus three specials; the tiny models): no
  vocabulary file, every string round-trips.
* ``"folder"``: ``HFTokenizer`` of the checkpoint's own folder (``tokenizer.json`` beside
  ``config.json``; ``save_model`` copies the tokenizer files there, and the bos / eos / pad ids of
  an HF ``config.json``, which ours replaces, into ``generation_config.json``).
* ``"hf:/abs/path"``: written by older versions before the files were copied; still read, from
  that path (``save_model`` rewrites it as ``"folder"``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Protocol, Sequence

BYTES, FOLDER, LEGACY_PREFIX = "bytes", "folder", "hf:"
BYTE_TOKENIZER_DIR = Path(__file__).parent / "data" / "byte_tokenizer"   # ByteTokenizer as HF files
# what save_model copies next to the weights (those present)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")     # what an HF config.json may hold


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    name = BYTES
    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A local ``tokenizer.json`` (the ``tokenizers`` library) behind the ``Tokenizer`` protocol;
    bos / eos / pad from the JSON files beside it. ``path``: the folder it was read from."""

    name = FOLDER

    def __init__(self, folder):
        from tokenizers import Tokenizer as _Tok

        self.path = folder = Path(folder)
        try:
            self._tok = _Tok.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"cannot read {folder / 'tokenizer.json'}: {first}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        special = _special_tokens(folder)
        self.eos_id = self._id(special, "eos_token", None)
        self.bos_id = self._id(special, "bos_token", self.eos_id)
        self.pad_id = self._id(special, "pad_token", self.eos_id)
        if self.eos_id is None:
            self.eos_id = self.vocab_size - 1 if self.bos_id is None else self.bos_id
        if self.bos_id is None:
            self.bos_id = self.eos_id
        if self.pad_id is None:
            self.pad_id = self.eos_id

    def _id(self, special: dict, key: str, fallback):
        """``<key>_id`` (an int, or the first of a list), else the id of the token ``<key>``."""
        v = special.get(key + "_id")
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

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _special_tokens(folder: Path) -> dict:
    """The special-token keys of the folder's JSON files, the first file that has a key winning
    (``generation_config.json`` last: it keeps the ids of an HF ``config.json`` left behind)."""
    special: dict = {}
    for f in ("tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json"):
        data = _read_json(folder / f)
        special.update({k: v for k, v in data.items() if k not in special})
    return special


def check_name(name: str) -> str | None:
    """Why ``name`` is not a ``config.tokenizer`` value, or None (what ``ModelConfig`` validates)."""
    if name in (BYTES, FOLDER) or str(name).startswith(LEGACY_PREFIX):
        return None
    return f"tokenizer must be {BYTES!r} or {FOLDER!r} (the tokenizer files beside config.json), not {name!r}"


def tokenizer_for(config, folder=None) -> Tokenizer:
    """The tokenizer ``config.tokenizer`` names; ``folder``: the checkpoint's own folder (for
    ``"folder"``). A ``ValueError`` (one line) when its files are missing or unreadable."""
    name = config.tokenizer
    if name == BYTES:
        return ByteTokenizer()
    if name.startswith(LEGACY_PREFIX):
        return HFTokenizer(Path(name[len(LEGACY_PREFIX):]).expanduser())
    if name == FOLDER and folder is not None:
        return HFTokenizer(folder)
    if name == FOLDER:
        raise ValueError("the config names the tokenizer files of its checkpoint folder, but no folder was given")
    raise ValueError(check_name(name))


def copy_tokenizer_files(src, dest) -> list[str]:
    """Copy the tokenizer files present in ``src`` into ``dest`` (nothing when they are one folder),
    with the special-token ids of ``src/config.json`` (``carry_special_ids``)."""
    src, dest = Path(src), Path(dest)
    if src.resolve() == dest.resolve():
        return []
    found = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    for f in found:
        shutil.copyfile(src / f, dest / f)
    carry_special_ids(src, dest)
    return found


def carry_special_ids(src: Path, dest: Path) -> None:
    """bos / eos / pad ids of an HF ``src/config.json`` into ``dest/generation_config.json`` (the
    keys it lacks; created if absent): ``HFTokenizer`` reads them there once our ``config.json``
    replaces theirs, so the ids do not change with ``save_model``."""
    theirs = _read_json(src / "config.json")
    ids = {k: theirs[k] for k in SPECIAL_ID_KEYS if theirs.get(k) is not None}
    if not ids:
        return
    gen_file = dest / "generation_config.json"
    gen = _read_json(gen_file) if gen_file.is_file() else {}
    missing = {k: v for k, v in ids.items() if k not in gen}
    if missing:
        gen_file.write_text(json.dumps({**gen, **missing}, indent=2) + "\n")


def _read_json(file: Path) -> dict:
    """A JSON object file, or {} when absent, unreadable or not an object."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
