"""`yoco report`: not built yet (see the README's roadmap)."""
from __future__ import annotations

from .options import fail


def report() -> None:
    """Not built yet: exits 2."""
    fail("`yoco report` is not built yet")
