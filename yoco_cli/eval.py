"""`yoco eval`: not built yet (see the README's roadmap)."""
from __future__ import annotations

from .options import fail


def eval_command() -> None:
    """Not built yet: exits 2."""
    fail("`yoco eval` is not built yet")
