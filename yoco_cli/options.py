"""What every subcommand shares: option aliases, size parsing, devices, and one-line errors."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console(stderr=True)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


# -- shared options (Annotated aliases, huggingface_hub-CLI style) ----------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Preset name (e.g. yoco-tiny) or checkpoint path.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda if present).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="fp32, bf16 or fp16 (auto: bf16 on cuda, fp32 on cpu).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Results folder.")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Skip cells already in the CSV.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_MULT = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(text: str) -> int:
    """``512`` -> 512, ``4k`` -> 4096, ``128K`` -> 131072, ``1m``/``1M`` -> 1048576."""
    m = _SIZE.match(str(text))
    if not m:
        fail(f"bad size {text!r}: use a number with an optional k or m suffix, e.g. 512, 4k, 1m")
    value = float(m.group(1)) * _MULT[m.group(2).lower()]
    if value < 1 or value != int(value):
        fail(f"bad size {text!r}: must be a positive whole number of tokens")
    return int(value)


def parse_size_list(text: str, doubling_from: int | None = None) -> list[int]:
    """A comma list of sizes; with ``doubling_from``, a single size means a doubling sweep up to it
    (``1m``), and a single size with a trailing comma means just that size (``256k,``)."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        fail("empty size list")
    sizes = [parse_size(p) for p in parts]
    literal = str(text).strip().endswith(",")
    if len(sizes) == 1 and doubling_from is not None and sizes[0] > doubling_from and not literal:
        top, s, sizes = sizes[0], doubling_from, []
        while s < top:
            sizes.append(s)
            s *= 2
        sizes.append(top)
    return sorted(set(sizes))


def parse_chunk(text: str, auto: int | None) -> int | None:
    """``--chunk-size``: ``auto`` gives ``auto`` (the command's default); ``0``, ``none`` or
    ``off`` give None (the whole prompt in one piece); a size gives that many tokens."""
    key = str(text).strip().lower()
    if key == "auto":
        return auto
    if key in ("0", "none", "off"):
        return None
    return parse_size(key)


def format_size(n: int) -> str:
    for unit, mult in (("m", 1024 ** 2), ("k", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def parse_float_list(text: str, name: str, lo: float | None = None, hi: float | None = None) -> list[float]:
    out = []
    for p in str(text).split(","):
        if not p.strip():
            continue
        try:
            x = float(p)
        except ValueError:
            fail(f"bad {name} {p.strip()!r}: not a number")
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            fail(f"bad {name} {x:g}: must be between {lo:g} and {hi:g}")
        out.append(x)
    if not out:
        fail(f"empty {name} list")
    return out


def resolve_device(name: str) -> str:
    import torch

    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        idx = name.partition(":")[2]
        if idx and (not idx.isdigit() or int(idx) >= torch.cuda.device_count()):
            fail(f"--device {name}: no such GPU (this machine has {torch.cuda.device_count()})")
        return name
    fail(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)")


def resolve_dtype(name: str, device: str):
    from yoco_core.dtypes import from_name as dtype_from_name

    try:
        return dtype_from_name(name, device)
    except ValueError as e:
        fail(str(e))


def load_model_or_fail(name: str, device: str, dtype):
    from yoco_core import CheckpointError, load_model

    try:
        return load_model(name, device=device, dtype=dtype)
    except CheckpointError as e:
        fail(str(e))


_ARGV: list[str] | None = None   # set by main() to the arguments it was given


def set_argv(argv: list[str] | None) -> None:
    global _ARGV
    _ARGV = None if argv is None else list(argv)      # None: command_line reads sys.argv


def command_line() -> str:
    """The command as typed, for the record kept beside results."""
    import shlex

    args = sys.argv[1:] if _ARGV is None else _ARGV
    return "yoco " + " ".join(shlex.quote(a) for a in args)
