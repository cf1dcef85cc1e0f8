"""Build the yoco_passkey data: a RULER-style needle in filler text.

Each document hides one line ``One of the special magic numbers for {key} is: {value}.`` (a
7-digit value) at a given depth of a filler text of a given length, then asks::

    What is the special magic number for {key} mentioned in the provided text? The special magic
    number for {key} mentioned in the provided text is

Lengths are tokens of a tokenizer (``--tokenizer PATH``: a model folder, a tokenizer.json or a
.tiktoken rank file; read with ``yoco_core.tokenizer.load_tokenizer``, its BOS counted); without
one, UTF-8 bytes, the tokens of the byte-level models (the shipped ``data/test.jsonl``). ``k`` /
``m`` suffixes work. Deterministic for a given ``--seed``. lm-eval builds the documents for the
evaluated model's tokenizer at load time (``utils.load``), so a length is in that model's tokens.

    python tasks/yoco_passkey/generate.py --lengths 512,1024,2048,4096 --per-length 8
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
HEADER = ("Some special magic numbers are hidden within the following text. Make sure to memorize "
          "it. I will quiz you about the numbers afterwards.\n")
QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? The special "
            "magic number for {key} mentioned in the provided text is")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
# Filler written for this project: plain, repetitive sentences with no numbers in them.
FILLER = [
    "The river runs past the old mill and on toward the hills.",
    "A light wind moves the tall grass along the edge of the field.",
    "The market opens early and closes when the bread runs out.",
    "Clouds gather over the lake in the late afternoon.",
    "The path through the forest is quiet and covered with leaves.",
    "Children play near the fountain while their parents talk.",
    "The library keeps its windows open during the warm months.",
    "A small boat waits at the end of the wooden pier.",
]
KEYS = ["amber-falcon", "quiet-harbor", "silver-meadow", "rapid-cedar", "hollow-pine", "bright-canyon",
        "gentle-summit", "crimson-delta", "frozen-orchard", "misty-valley", "golden-marsh", "lucky-otter",
        "velvet-ridge", "wild-juniper", "calm-glacier", "brave-lantern"]


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def utf8_bytes(text: str) -> int:
    return len(text.encode())


def make_doc(rng: random.Random, length: int, depth: float, count=utf8_bytes) -> dict:
    """A document of at most ``length`` tokens as ``count`` counts them (the whole prompt's
    tokenization; the filler is estimated sentence by sentence, then trimmed to fit)."""
    key = rng.choice(KEYS)
    value = str(rng.randint(1_000_000, 9_999_999))
    needle = NEEDLE.format(key=key, value=value)
    fixed = count(HEADER + QUESTION.format(key=key) + " " + needle)
    budget = max(0, length - fixed)
    sentences, used, sizes = [], 0, {}
    while True:
        s = rng.choice(FILLER)
        n = sizes.setdefault(s, count(" " + s))
        if used + n > budget:
            break
        sentences.append(s)
        used += n
    while True:
        at = round(depth * len(sentences))
        body = " ".join(sentences[:at] + [needle] + sentences[at:])
        prompt = HEADER + body + QUESTION.format(key=key)
        tokens = count(prompt)
        if tokens <= length or not sentences:
            break
        sentences.pop()
    return {"input": prompt, "target": value, "key": key, "length": length, "depth": depth, "tokens": tokens}


def build(lengths: list[int], per_length: int, seed: int, count=utf8_bytes) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for length in lengths:
        for i in range(per_length):
            depth = 0.0 if per_length == 1 else round(i / (per_length - 1), 3)
            docs.append(make_doc(rng, length, depth, count))
    return docs


def token_counter(path: str):
    """``len`` of the ids the tokenizer at ``path`` gives a text, with the special tokens it adds."""
    from yoco_core.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    return lambda text: len(tok.encode(text, add_special_tokens=True))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="512,1024,2048,4096", help="comma list of prompt lengths (tokens)")
    ap.add_argument("--tokenizer", default=None, help="tokens of this tokenizer (default: UTF-8 bytes)")
    ap.add_argument("--per-length", type=int, default=8, help="documents per length (depths spread 0..1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data" / "test.jsonl")
    args = ap.parse_args(argv)
    count = token_counter(args.tokenizer) if args.tokenizer else utf8_bytes
    docs = build([parse_size(x) for x in args.lengths.split(",") if x.strip()], args.per_length, args.seed, count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    print(f"wrote {len(docs)} documents to {args.out}")


if __name__ == "__main__":
    main()
