"""Data loading and scoring for yoco_passkey (imported by lm-eval through ``!function``)."""
from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).parent / "data"


def load(**kwargs):
    """The documents as a ``DatasetDict`` (lm-eval passes task metadata as kwargs). Their lengths
    are tokens of ``tokenizer`` (the metadata ``yoco-lm-eval`` / ``yoco eval`` set to the evaluated
    model's): the shipped file (UTF-8 bytes) for the byte tokenizer, else the same documents
    rebuilt at load time (``generate.build``, same lengths, depths and seed) in that tokenizer's
    tokens."""
    import datasets

    shipped = datasets.load_dataset("json", data_files={"test": str(DATA / "test.jsonl")})
    tokenizer = kwargs.get("tokenizer")
    if not tokenizer or _is_bytes(tokenizer):
        return shipped
    gen = _generate_module()
    rows = shipped["test"]
    lengths = list(dict.fromkeys(rows["length"]))
    docs = gen.build(lengths, len(rows) // len(lengths), 0, gen.token_counter(str(tokenizer)))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _is_bytes(tokenizer) -> bool:
    if str(tokenizer) == "bytes":
        return True
    try:
        from yoco_core.tokenizer import BYTE_TOKENIZER_DIR
    except ImportError:
        return False
    return Path(str(tokenizer)).expanduser().resolve() == BYTE_TOKENIZER_DIR.resolve()


def _generate_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("yoco_passkey_generate", Path(__file__).parent / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match: the first word of the answer, trailing punctuation removed, equals the value."""
    m = re.match(r"\s*(\S+)", results[0] or "")
    answer = m.group(1).rstrip(".,;:!?\"'") if m else ""
    return {"exact_match": float(answer == str(doc["target"]))}
