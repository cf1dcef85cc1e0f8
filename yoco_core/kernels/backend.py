"""Which implementation each kernel family runs: one selector, set by the environment once.

Three families, each with a plain-PyTorch form (``torch``) beside a fast one:

==================  ========================  ===============================================
variable            values                    family
==================  ========================  ===============================================
YOCO_KERNEL_FUSED   auto | torch | triton     ``kernels/fused``: RMSNorm, RoPE, SwiGLU, ...
YOCO_KERNEL_DECODE  auto | torch | triton     ``kernels/decode_attention``: split-KV decoding
YOCO_KERNEL_GRET    auto | torch | fla        ``kernels/gret``: gated retention's prefill
==================  ========================  ===============================================

The variables are read once, when this module is first imported: a bad value or an unknown
``YOCO_KERNEL_*`` name is refused there (``SettingError``, one line naming the variable), as is
one of the older per-family names (``YOCO_GRET_BACKEND``, ...), which would otherwise be ignored; and
later changes to ``os.environ`` do nothing. In code, ``override(gret="torch")`` (a context
manager, nestable, restoring on exit) changes the choice for what runs inside it, and
``select(..., want=)`` for one call.

The rule (``select``), the same for every family:

* ``torch`` asked for: the PyTorch form;
* a tensor that needs a gradient while the fast form is one of our Triton kernels (they have no
  backward; fla-core's have): the PyTorch form;
* CUDA tensors: the fast form (fla-core: if it imports);
* the CPU with ``triton`` asked for by name and ``TRITON_INTERPRET=1`` (set before triton is first
  imported): the Triton kernels in triton's interpreter, for tests;
* otherwise the PyTorch form.

Besides the choices, this module records what a device refused at run time (``refuse`` /
``refused``): e.g. cuDNN's fused attention, which ``kernels/attention`` then stops asking for.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch

from ..errors import SettingError

ENV_PREFIX = "YOCO_KERNEL_"
FAST = {"fused": "triton", "decode": "triton", "gret": "fla"}   # each family's fast form
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
RENAMED = {"YOCO_FUSED_KERNEL": "YOCO_KERNEL_FUSED", "YOCO_DECODE_KERNEL": "YOCO_KERNEL_DECODE",
           "YOCO_GRET_BACKEND": "YOCO_KERNEL_GRET"}     # the variables before there was one selector


def _check(name: str, family: str, value: str) -> str:
    allowed = ("auto", "torch", FAST[family])
    if value not in allowed:
        raise SettingError(f"{name}={value!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}")
    return value


def read_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The choice of every family from ``YOCO_KERNEL_<FAMILY>`` in ``environ`` (unset: ``auto``);
    ``SettingError`` (one line) for a bad value or an unknown ``YOCO_KERNEL_`` variable."""
    known = {ENV_PREFIX + f.upper(): f for f in FAST}
    for old, new in RENAMED.items():          # set, it would be ignored: refused instead
        if old in environ:
            raise SettingError(f"{old} was renamed {new}")
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known:
            raise SettingError(f"unknown kernel variable {name} (known: {', '.join(known)})")
    return {f: _check(name, f, environ.get(name, "auto").strip().lower()) for name, f in known.items()}


_chosen = read_env(os.environ)
_refused: set[tuple[str, str]] = set()


def chosen(family: str) -> str:
    """What ``family`` is set to now: ``auto``, ``torch`` or its fast form."""
    return _chosen[family]


@contextmanager
def override(**families: str | None) -> Iterator[None]:
    """Set families (``fused=``, ``decode=``, ``gret=``; None leaves one as it is) for the code
    inside; the previous choices come back on exit. Process-wide, like the variables."""
    global _chosen
    new = dict(_chosen)
    for family, value in families.items():
        if family not in FAST:
            raise SettingError(f"unknown kernel family {family!r} (known: {', '.join(FAST)})")
        if value is not None:
            new[family] = _check(family, family, str(value).strip().lower())
    saved, _chosen = _chosen, new
    try:
        yield
    finally:
        _chosen = saved


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def select(family: str, *tensors: torch.Tensor | None, want: str | None = None,
           available: Callable[[], bool] | None = None) -> str:
    """``"torch"`` or ``family``'s fast form for a call on ``tensors`` (the first one's device
    decides; see the module docstring). ``want``: this call's choice instead of ``chosen``;
    ``available``: asked only on CUDA, whether the fast form can run at all."""
    want = chosen(family) if want is None else _check(family, family, str(want).strip().lower())
    fast = FAST[family]
    if want == "torch" or (fast == "triton" and _needs_grad(tensors)):
        return "torch"
    if tensors[0].is_cuda:
        return fast if available is None or available() else "torch"
    if want == "triton" and INTERPRET:
        return "triton"
    return "torch"


def refuse(capability: str, device: torch.device) -> None:
    """Record that ``device`` refused ``capability`` (e.g. ``"cudnn_attention"``) for this process."""
    _refused.add((capability, str(device)))


def refused(capability: str, device: torch.device) -> bool:
    return (capability, str(device)) in _refused
