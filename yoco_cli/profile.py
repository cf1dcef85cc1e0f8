"""`yoco profile`: not built yet (see the README's roadmap)."""
from __future__ import annotations

from .options import fail


def profile() -> None:
    """Not built yet: exits 2."""
    fail("`yoco profile` is not built yet")
