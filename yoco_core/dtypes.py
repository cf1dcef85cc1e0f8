"""One spelling table for dtypes: what options accept, what every CSV writes, what resume reads.

The written names are ``fp32``, ``bf16`` and ``fp16`` (what ``profile.csv`` always wrote and
``needle.csv`` writes from now on); ``float32`` / ``bfloat16`` / ``float16`` (torch's own names, and
what older ``needle.csv`` files hold) are accepted everywhere a name is read. The table itself needs
no torch (``yoco report`` reads CSVs without it); the functions that return torch dtypes import it.
"""
from __future__ import annotations

SPELLINGS = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
             "fp16": "fp16", "float16": "fp16"}      # accepted -> written
TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}   # written -> torch attribute


def canonical(name) -> str:
    """Any accepted spelling (``bfloat16``, ``BF16``) as the written one (``bf16``); other text as is."""
    return SPELLINGS.get(str(name).strip().lower(), str(name))


def name_of(dtype) -> str:
    """The spelling written to CSVs and reports for a torch dtype (``torch.bfloat16`` -> ``bf16``)."""
    return canonical(str(dtype).removeprefix("torch."))


def default_dtype(device):
    """bf16 on CUDA, fp32 elsewhere (what ``auto`` means)."""
    import torch

    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def from_name(name: str, device):
    """``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16``, or ``auto`` (bf16 on CUDA,
    fp32 elsewhere); anything else is a ``ValueError``."""
    import torch

    key = str(name).strip().lower()
    if key == "auto":
        return default_dtype(device)
    if key not in SPELLINGS:
        raise ValueError(f"unknown dtype {name!r} (use fp32, bf16, fp16 or auto)")
    return getattr(torch, TORCH_NAMES[SPELLINGS[key]])


def element_size(dtype) -> int:
    """Bytes per element."""
    return dtype.itemsize
