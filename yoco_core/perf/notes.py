"""The markers a profile row's ``note`` carries for what its columns do not say, written by the
sweep and read back by ``--resume`` and ``yoco report`` (no torch here: the report reads CSVs only)."""
from __future__ import annotations

ONE_SEQUENCE = "prefilling one sequence:"   # a --timed-prefills row's note when its batch-1 prefill failed
COLD_PREFILL = "prefill timed cold:"        # a --cold-after row's note: its prefill time is the warm-up's own
