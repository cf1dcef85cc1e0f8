"""Every tokenizer, apart from the models.

A model holds no tokenizer by construction: ``load_model`` attaches the one its checkpoint names
(``model.tokenizer = tokenizer_for(config, folder)``, or ``tokenizer_for(config, path=PATH)`` for
``load_model(..., tokenizer=PATH)``); code that builds a model itself calls
``tokenizer_for(model.config)``. What ``config.tokenizer`` may say:

* ``"bytes"``: ``ByteTokenizer`` (UTF-8 bytes 0..255 plus three specials; the tiny models): no
  vocabulary file, every string round-trips.
* ``"folder"``: the tokenizer of the checkpoint's own folder (``folder_tokenizer``):
  ``tokenizer.json`` (``HFTokenizer``, the ``tokenizers`` library), else a ``.tiktoken`` rank file
  (``TiktokenTokenizer``), else whatever transformers' ``AutoTokenizer`` loads there offline
  (``AutoTokenizerWrapper``: a sentencepiece ``tokenizer.model``, ...). A folder with none of these
  is a one-line ``ValueError``, never a silent fallback to bytes. ``save_model`` copies the files
  (and the bos / eos / pad ids of an HF ``config.json``, which ours replaces, into
  ``generation_config.json``).
* ``"hf:/abs/path"``: written by older versions before the files were copied; still read, from
  that path (``save_model`` rewrites it as ``"folder"``).

Every tokenizer has the same surface: ``encode(text, add_special_tokens=True)`` does what the
model's own tokenizer does (its post-processor / ``add_bos_token``: a BOS where it adds one),
``encode(text)`` the bare ids (``add_bos=True`` prepends ``bos_id``, as older code asked);
``encode_offsets(text)`` the bare ids with the character where each token starts; ``eos_ids``
every id that ends a generation (``generation_config.json``'s ``eos_token_id``, an int or a list,
plus the tokenizer's own EOS); ``chat_template`` the folder's template or None.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Protocol, Sequence

BYTES, FOLDER, LEGACY_PREFIX = "bytes", "folder", "hf:"
BYTE_TOKENIZER_DIR = Path(__file__).parent / "data" / "byte_tokenizer"   # ByteTokenizer as HF files
# what save_model copies next to the weights (those present; plus any *.tiktoken rank file)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "spiece.model",
                   "vocab.txt")
# what AutoTokenizer may read from a folder without tokenizer.json (those has_tokenizer_files looks for)
AUTO_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt",
              "spiece.model", "vocab.txt")
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")     # what an HF config.json may hold
# tiktoken's cl100k_base split pattern (the published one; the ranks come from the user's file)
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                  r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
CL100K_RANKS = 100256
CL100K_SPECIALS = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                   "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    eos_ids: tuple[int, ...]
    chat_template: str | None

    def encode(self, text: str, add_bos: bool = False, add_special_tokens: bool = False) -> list[int]: ...

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class _Base:
    """What every tokenizer shares: ``encode`` in terms of ``_raw`` (the bare ids) and
    ``_special`` (the ids the tokenizer itself adds around them)."""

    chat_template: str | None = None
    path: Path | None = None

    def encode(self, text: str, add_bos: bool = False, add_special_tokens: bool = False) -> list[int]:
        if add_special_tokens:
            return self._special(text)
        ids = self._raw(text)
        return [self.bos_id] + ids if add_bos else ids

    def _special(self, text: str) -> list[int]:
        return self._raw(text)

    @property
    def adds_bos(self) -> bool:
        """Whether ``encode(..., add_special_tokens=True)`` starts with ``bos_id`` (what needle,
        eval and generate put in front of a prompt)."""
        ids = self._special("a")
        return bool(ids) and ids[0] == self.bos_id and self._raw("a")[:1] != [self.bos_id]


class ByteTokenizer(_Base):
    """UTF-8 bytes. Its own encoding adds a BOS: the shipped models were trained that way."""

    name = BYTES
    bos_id, eos_id, pad_id = 256, 257, 258
    bos_token, eos_token = "<bos>", "<eos>"        # their names in the byte tokenizer's HF files
    eos_ids = (257,)
    vocab_size = 259

    def _raw(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _special(self, text: str) -> list[int]:
        return [self.bos_id] + self._raw(text)

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        ids, starts = [], []
        for i, ch in enumerate(text):
            b = ch.encode("utf-8")
            ids.extend(b)
            starts.extend([i] * len(b))
        return ids, starts

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class _FolderSpecials:
    """bos / eos / pad / ``eos_ids`` / chat template read from the JSON files of ``folder``
    (mixed into the tokenizers that read a folder; ``_token_id(str) -> int | None`` theirs)."""

    def _read_specials(self, folder: Path, defaults: dict) -> None:
        special = _special_tokens(folder)
        self.eos_id = self._id(special, "eos_token", defaults.get("eos"))
        self.bos_id = self._id(special, "bos_token", defaults.get("bos", self.eos_id))
        self.pad_id = self._id(special, "pad_token", self.eos_id)
        if self.eos_id is None:
            self.eos_id = self.vocab_size - 1 if self.bos_id is None else self.bos_id
        if self.bos_id is None:
            self.bos_id = self.eos_id
        if self.pad_id is None:
            self.pad_id = self.eos_id
        gen = _read_json(folder / "generation_config.json").get("eos_token_id")
        listed = gen if isinstance(gen, list) else [gen]
        self.eos_ids = tuple(dict.fromkeys([i for i in listed if isinstance(i, int)] + [self.eos_id]))
        flag = _read_json(folder / "tokenizer_config.json").get("add_bos_token")
        self._add_bos_flag = flag if isinstance(flag, bool) else None
        self.chat_template = read_chat_template(folder)

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
        if isinstance(t, str) and self._token_id(t) is not None:
            return self._token_id(t)
        return fallback

    def _bos_as_configured(self, ids: list[int], text: str) -> list[int]:
        """``ids`` (the post-processor's) with a BOS added or dropped where ``tokenizer_config.json``
        says ``add_bos_token`` explicitly (what transformers' fast tokenizers honour)."""
        starts = bool(ids) and ids[0] == self.bos_id and self._raw(text)[:1] != [self.bos_id]
        if self._add_bos_flag is True and not starts:
            return [self.bos_id] + ids
        if self._add_bos_flag is False and starts:
            return ids[1:]
        return ids


class HFTokenizer(_FolderSpecials, _Base):
    """A local ``tokenizer.json`` (the ``tokenizers`` library); bos / eos / pad / ``eos_ids`` from
    the JSON files beside it. ``path``: the folder it was read from. ``source``: a folder or the
    ``.json`` file itself (any name)."""

    name = FOLDER

    def __init__(self, source):
        from tokenizers import Tokenizer as _Tok

        source = Path(source)
        file = source if source.is_file() else source / "tokenizer.json"
        self.path = folder = file.parent
        try:
            self._tok = _Tok.from_file(str(file))
        except Exception as e:
            raise ValueError(f"cannot read {file}: {_first_line(e)}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._read_specials(folder, {})
        self.files = {"tokenizer.json": file, **_present(folder, exclude=("tokenizer.json",))}

    def _token_id(self, token: str):
        return self._tok.token_to_id(token)

    @property
    def bos_token(self) -> str:
        return self._tok.id_to_token(self.bos_id) or ""

    @property
    def eos_token(self) -> str:
        return self._tok.id_to_token(self.eos_id) or ""

    def _raw(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _special(self, text: str) -> list[int]:
        return self._bos_as_configured(self._tok.encode(text, add_special_tokens=True).ids, text)

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [o[0] for o in enc.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


class TiktokenTokenizer(_Base):
    """A tiktoken rank file (``<base64 token> <rank>`` per line, e.g. cl100k_base.tiktoken), split
    with cl100k_base's pattern. bos = eos = pad = ``<|endoftext|>``; nothing is added around a text
    (tiktoken adds nothing). Needs the ``tiktoken`` package; read offline, nothing downloaded."""

    name = FOLDER

    def __init__(self, file):
        file = Path(file)
        try:
            import tiktoken
        except ImportError:
            raise ValueError(f"{file}: a .tiktoken rank file needs the tiktoken package (pip install tiktoken)") from None
        ranks = read_rank_file(file)
        n = max(ranks.values()) + 1
        specials = dict(CL100K_SPECIALS) if n == CL100K_RANKS else {"<|endoftext|>": n}
        self._enc = tiktoken.Encoding(name=file.stem, pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=specials)
        self._n_ranks = n
        self.vocab_size = self._enc.n_vocab
        self.bos_id = self.eos_id = self.pad_id = specials["<|endoftext|>"]
        self.bos_token = self.eos_token = "<|endoftext|>"
        self.path = file.parent
        gen = _read_json(file.parent / "generation_config.json").get("eos_token_id")
        listed = gen if isinstance(gen, list) else [gen]
        self.eos_ids = tuple(dict.fromkeys([i for i in listed if isinstance(i, int)] + [self.eos_id]))
        self.chat_template = read_chat_template(file.parent)
        self.files = {file.name: file, **_present(file.parent, only=("generation_config.json", "chat_template.jinja"))}

    def _raw(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")     # as tokenizers matches added tokens

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        ids = self._raw(text)
        decoded, starts = self._enc.decode_with_offsets(ids)
        if decoded != text:                           # a token that splits a character: no offsets
            return ids, []
        return ids, list(starts)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids if 0 <= int(i) < self._n_ranks], errors="replace")


class AutoTokenizerWrapper(_FolderSpecials, _Base):
    """Whatever transformers' ``AutoTokenizer`` loads from a local folder offline
    (``local_files_only=True``: a sentencepiece ``tokenizer.model``, tiktoken files, ...)."""

    name = FOLDER

    def __init__(self, folder):
        self.path = folder = Path(folder)
        try:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise ValueError(f"no usable tokenizer in {folder} (transformers' AutoTokenizer: {why}); "
                             "point at one with --tokenizer PATH, or --tokenizer bytes") from None
        self.vocab_size = len(self._tok)
        t = self._tok
        self._read_specials(folder, {"eos": t.eos_token_id, "bos": t.bos_token_id})
        self._add_bos_flag = None                     # AutoTokenizer already honours it
        self.chat_template = self.chat_template or getattr(t, "chat_template", None) or None
        self.files = _present(folder)
        self.bos_token, self.eos_token = t.convert_ids_to_tokens([self.bos_id, self.eos_id])

    def _token_id(self, token: str):
        i = self._tok.convert_tokens_to_ids(token)
        return i if isinstance(i, int) and i != self._tok.unk_token_id else None

    def _raw(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def _special(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True))

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        if not getattr(self._tok, "is_fast", False):
            return self._raw(text), []                # a slow tokenizer knows no offsets
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [o[0] for o in enc["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


# -- finding and loading ------------------------------------------------------------------------
def read_rank_file(file: Path) -> dict[bytes, int]:
    """tiktoken's rank file: one ``<base64 token> <rank>`` per line. ValueError (one line) if not."""
    try:
        lines = Path(file).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {file}: {_first_line(e)}") from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except ValueError:
            raise ValueError(f"{file}:{n}: not a tiktoken rank line (base64 token, space, rank)") from None
    if not ranks:
        raise ValueError(f"{file}: an empty tiktoken rank file")
    return ranks


def read_chat_template(folder: Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template`` (a string, or a list of named templates: the one named ``default``)."""
    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    t = _read_json(Path(folder) / "tokenizer_config.json").get("chat_template")
    if isinstance(t, list):
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default")
    return t if isinstance(t, str) and t.strip() else None


def folder_tokenizer(folder) -> Tokenizer:
    """The tokenizer of a model folder: ``tokenizer.json``, else a ``*.tiktoken`` rank file, else
    what ``AutoTokenizer`` loads there offline. ValueError (one line) when there is none."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return HFTokenizer(folder)
    ranks = sorted(folder.glob("*.tiktoken"))
    if ranks:
        return TiktokenTokenizer(ranks[0])
    if not has_tokenizer_files(folder):
        raise ValueError(f"no tokenizer in {folder} (tokenizer.json, tokenizer.model or a .tiktoken rank "
                         "file); point at one with --tokenizer PATH, or --tokenizer bytes")
    return AutoTokenizerWrapper(folder)


def load_tokenizer(path) -> Tokenizer:
    """``--tokenizer PATH``: ``bytes``, a folder (``folder_tokenizer``), a ``tokenizer.json`` file
    (any ``.json`` name) or a ``.tiktoken`` rank file. ValueError (one line) otherwise."""
    if str(path) == BYTES:
        return ByteTokenizer()
    p = Path(path).expanduser()
    if p.is_dir():
        return folder_tokenizer(p)
    if not p.is_file():
        raise ValueError(f"tokenizer {str(path)!r} is neither 'bytes' nor an existing folder or file")
    if p.suffix == ".json":
        return HFTokenizer(p)
    if p.suffix == ".tiktoken":
        return TiktokenTokenizer(p)
    raise ValueError(f"tokenizer file {str(p)!r}: use a folder, a tokenizer.json or a .tiktoken rank file")


def check_name(name: str) -> str | None:
    """Why ``name`` is not a ``config.tokenizer`` value, or None (what ``ModelConfig`` validates)."""
    if name in (BYTES, FOLDER) or str(name).startswith(LEGACY_PREFIX):
        return None
    return f"tokenizer must be {BYTES!r} or {FOLDER!r} (the tokenizer files beside config.json), not {name!r}"


def tokenizer_for(config, folder=None, path=None) -> Tokenizer:
    """The tokenizer ``config.tokenizer`` names; ``folder``: the checkpoint's own folder (for
    ``"folder"``); ``path``: a tokenizer the user chose (``load_tokenizer``), used instead. A
    ``ValueError`` (one line) when its files are missing or unreadable."""
    if path is not None:
        return load_tokenizer(path)
    name = config.tokenizer
    if name == BYTES:
        return ByteTokenizer()
    if name.startswith(LEGACY_PREFIX):
        return folder_tokenizer(Path(name[len(LEGACY_PREFIX):]).expanduser())
    if name == FOLDER and folder is not None:
        return folder_tokenizer(folder)
    if name == FOLDER:
        raise ValueError("the config names the tokenizer files of its checkpoint folder, but no folder was given")
    raise ValueError(check_name(name))


def check_vocab(tokenizer: Tokenizer, vocab_size: int, source: str) -> None:
    """ValueError (one line) when the tokenizer can produce ids the model's embedding lacks."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"{source}: the tokenizer has {tokenizer.vocab_size} ids, the model's embedding "
                         f"only {vocab_size}; use the model's own tokenizer (--tokenizer PATH)")


def has_tokenizer_files(folder) -> bool:
    """Whether ``folder`` holds anything ``folder_tokenizer`` could read."""
    folder = Path(folder)
    return any((folder / f).is_file() for f in AUTO_FILES) or any(folder.glob("*.tiktoken"))


# -- chat templates -------------------------------------------------------------------------------
def chat_template_for(tokenizer: Tokenizer, spec: str | None) -> tuple[str | None, str]:
    """``--chat-template``: (the template text or None, what a CSV records). ``auto``: the model
    folder's template if it has one (recorded ``model``), else none; ``none`` (or None): none; any
    other value: a jinja file (recorded as its path). ValueError (one line) for a missing file."""
    if spec is None or spec == "none":
        return None, "none"
    if spec == "auto":
        t = getattr(tokenizer, "chat_template", None)
        return (t, "model") if t else (None, "none")
    p = Path(spec).expanduser()
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"chat template {spec!r}: use auto, none or a readable jinja file ({_first_line(e)})") from None


def render_chat(tokenizer: Tokenizer, messages: list[dict], template: str, add_generation_prompt: bool = True,
                continue_final_message: bool = False) -> str:
    """``messages`` rendered by ``template`` with transformers' ``apply_chat_template`` (text, not
    ids), the tokenizer's bos / eos token strings available to it. ValueError (one line) when the
    template fails."""
    host = _template_host(tokenizer)
    try:
        return host.apply_chat_template(messages, chat_template=template, tokenize=False,
                                        add_generation_prompt=add_generation_prompt,
                                        continue_final_message=continue_final_message)
    except Exception as e:                        # jinja syntax / TemplateError / raise_exception()
        raise ValueError(f"chat template failed: {_first_line(e)}") from None


def _template_host(tokenizer):
    """A transformers tokenizer to call ``apply_chat_template`` on: the wrapped one, else a fast
    tokenizer around the ``tokenizers`` object (the byte tokenizer's for the others: only the
    rendered text is used), with the model tokenizer's bos / eos strings."""
    host = getattr(tokenizer, "_host", None)
    if host is None:
        host = getattr(tokenizer, "_tok", None)
        if not hasattr(host, "apply_chat_template"):
            from tokenizers import Tokenizer as _Tok
            from transformers import PreTrainedTokenizerFast

            obj = host if isinstance(host, _Tok) else _Tok.from_file(str(BYTE_TOKENIZER_DIR / "tokenizer.json"))
            host = PreTrainedTokenizerFast(tokenizer_object=obj, bos_token=tokenizer.bos_token,
                                           eos_token=tokenizer.eos_token)
        tokenizer._host = host
    return host


# -- copying --------------------------------------------------------------------------------------
def copy_tokenizer_files(tokenizer, dest) -> list[str]:
    """Copy the files ``tokenizer`` was read from (``tokenizer.files``) into ``dest`` (nothing
    when they are there already), with the special-token ids of ``src/config.json``."""
    dest = Path(dest)
    files = getattr(tokenizer, "files", None) or {}
    src = getattr(tokenizer, "path", None)
    if src is None or Path(src).resolve() == dest.resolve():
        return []
    for name, f in files.items():
        shutil.copyfile(f, dest / name)
    carry_special_ids(Path(src), dest)
    return sorted(files)


def carry_special_ids(src: Path, dest: Path) -> None:
    """bos / eos / pad ids of an HF ``src/config.json`` into ``dest/generation_config.json`` (the
    keys it lacks; created if absent): the tokenizers read them there once our ``config.json``
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


def _present(folder: Path, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> dict[str, Path]:
    names = only if only is not None else TOKENIZER_FILES
    return {f: folder / f for f in names if f not in exclude and (folder / f).is_file()}


def _special_tokens(folder: Path) -> dict:
    """The special-token keys of the folder's JSON files, the first file that has a key winning
    (``generation_config.json`` last: it keeps the ids of an HF ``config.json`` left behind)."""
    special: dict = {}
    for f in ("tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json"):
        data = _read_json(folder / f)
        special.update({k: v for k, v in data.items() if k not in special})
    return special


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_json(file: Path) -> dict:
    """A JSON object file, or {} when absent, unreadable or not an object."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
