"""Data loading and scoring for yoco_passkey (imported by lm-eval through ``!function``)."""
from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).parent / "data"


def load(**kwargs):
    """The shipped JSON-lines file as a ``DatasetDict`` (lm-eval passes task metadata as kwargs)."""
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(DATA / "test.jsonl")})


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match: the first word of the answer, trailing punctuation removed, equals the value."""
    m = re.match(r"\s*(\S+)", results[0] or "")
    answer = m.group(1).rstrip(".,;:!?\"'") if m else ""
    return {"exact_match": float(answer == str(doc["target"]))}
