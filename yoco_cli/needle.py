"""`yoco needle`: not built yet (see the README's roadmap)."""
from __future__ import annotations

from .options import fail


def needle() -> None:
    """Not built yet: exits 2."""
    fail("`yoco needle` is not built yet")
