"""`yoco train`: not built yet (see the README's roadmap)."""
from __future__ import annotations

from .options import fail


def train() -> None:
    """Not built yet: exits 2."""
    fail("`yoco train` is not built yet")
