"""Tokenizers behind one small interface.

The tiny models use ``ByteTokenizer`` (UTF-8 bytes 0..255 plus three specials): no download, no
vocabulary file, every string round-trips. A BPE tokenizer can implement the same ``Tokenizer``
protocol later.
"""
from __future__ import annotations

from typing import Protocol, Sequence


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    name = "bytes"
    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def get_tokenizer(name: str = "bytes") -> Tokenizer:
    if name == "bytes":
        return ByteTokenizer()
    if name.startswith("hf:"):  # a local tokenizer.json (yoco_core.hf.HFTokenizer)
        from .hf import HFTokenizer

        return HFTokenizer(name[3:])
    raise ValueError(f"unknown tokenizer {name!r} (known: bytes, hf:PATH)")
