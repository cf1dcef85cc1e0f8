"""Rebuild this folder: the byte-level tokenizer of the tiny models as a local HF tokenizer.

Ids match ``yoco_core.tokenizer.ByteTokenizer``: byte b -> id b (0..255), ``<bos>`` 256, ``<eos>``
257, ``<pad>`` 258. Built with the ``tokenizers`` library: a BPE model with no merges over the 256
byte symbols of the ByteLevel pre-tokenizer (every byte is its own token, every string
round-trips). ``AutoTokenizer.from_pretrained(<this folder>)`` loads it offline, which is what
lm-eval's synthetic long-context tasks (RULER) need to size their prompts.

    python yoco_core/data/byte_tokenizer/build.py
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

HERE = Path(__file__).parent
SPECIALS = ("<bos>", "<eos>", "<pad>")


def build(out: Path = HERE) -> Path:
    alphabet = pre_tokenizers.ByteLevel.alphabet()            # the 256 byte symbols
    byte_of = {ch: b for b, ch in enumerate(_bytes_to_unicode())}
    assert set(alphabet) == set(byte_of)
    vocab = {ch: byte_of[ch] for ch in alphabet}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == 256 + i, (s, tok.token_to_id(s))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, indent=2) + "\n")
    return out


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order (what ByteLevel uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


if __name__ == "__main__":
    print(build())
