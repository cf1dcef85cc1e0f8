"""Data loading for yoco_kv_choice (imported by lm-eval through ``!function``)."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"


def load(**kwargs):
    """The shipped JSON-lines files as a ``DatasetDict`` (lm-eval passes task metadata as kwargs)."""
    import datasets

    return datasets.load_dataset("json", data_files={s: str(DATA / f"{s}.jsonl") for s in ("train", "test")})
